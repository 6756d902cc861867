"""Train the digits-FID classifier deterministically and write its weights into the package.

    .venv/bin/python scripts/train_digits_classifier.py

Recipe: seed 0, a fixed 1,500/297 train/held-out split, full-batch Adam (lr 3e-3) for 400 steps with
random ±1 pixel shifts, on one thread. Prints the held-out accuracy.
"""

import pathlib

import torch

from ddo_lightning.data import DigitsDataset
from ddo_lightning.metrics.digits import DigitsFeatures

OUT = pathlib.Path(__file__).resolve().parents[1] / "src/ddo_lightning/metrics/assets/digits_classifier.pt"


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = DigitsDataset()
    images, labels = data.images, data.raw_labels
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, held = perm[:1500], perm[1500:]
    net = DigitsFeatures(pretrained=False).train().requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(400):
        shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
        x = torch.roll(images[train], shifts=shift, dims=(2, 3))
        loss = torch.nn.functional.cross_entropy(net.logits(x), labels[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net.logits(images[held]).argmax(1) == labels[held]).float().mean()
    print(f"held-out accuracy {acc:.4f} on {len(held)} digits; final train loss {loss:.4f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
