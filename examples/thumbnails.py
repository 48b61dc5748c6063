"""Thumbnails through the mesh file store: PiCloud's cloud.files example, "even better".

The images are pushed once with ``mesh.files.sync`` (only new or changed ones travel,
by content hash: run it twice and the second push sends nothing); one ``mesh.map``
resizes every image on whatever node its job lands on, reading the image with
``getf`` and writing each thumbnail back with ``putf``; ``_files=`` places each job
next to its image where that costs no idle core; the client then pulls the
thumbnails with ``get``. With no JPEGs in the folder it makes a few first.

    pip install -e '.[examples]'              # Pillow
    python examples/thumbnails.py             # ./thumbnail-demo, a local mesh of 2 nodes
    python examples/thumbnails.py photos/     # your own folder of *.jpg
    MESH_PEERS=host1:7390,host2:7390 python examples/thumbnails.py photos/
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import random
import time

import mesh

SIZES = [(128, 128), (64, 64), (32, 32)]  # thumbnail sizes to generate


def resize_image(img_name: str) -> list[str]:
    """Make the thumbnails of one image in the mesh file store; return their names."""
    from PIL import Image

    thumb_names = []
    with mesh.files.getf(img_name) as imgf:  # seekable: no need to buffer it in memory
        name_start, _ = os.path.splitext(img_name)
        for size in SIZES:
            imgf.seek(0)
            img = Image.open(imgf)
            img.thumbnail(size, Image.Resampling.LANCZOS)
            out = io.BytesIO()
            img.convert("RGB").save(out, "JPEG")
            out.seek(0)
            thumb_name = f"{name_start}.thumbnail.{size[0]}.jpg"
            mesh.files.putf(out, thumb_name)  # back into the store, from the node
            thumb_names.append(thumb_name)
    return thumb_names


def make_samples(folder: str, count: int) -> None:
    """Write ``count`` colourful JPEGs, so the example runs anywhere."""
    from PIL import Image, ImageDraw

    os.makedirs(folder, exist_ok=True)
    rng = random.Random(7)
    for i in range(count):
        img = Image.new("RGB", (1024, 768), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(40):
            x, y = rng.randrange(1024), rng.randrange(768)
            r = rng.randrange(20, 200)
            draw.ellipse(
                (x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3))
            )
        img.save(os.path.join(folder, f"sample-{i:02d}.jpg"), "JPEG", quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default="thumbnail-demo", help="a folder of *.jpg")
    p.add_argument("--samples", type=int, default=8, help="JPEGs to make when there are none")
    p.add_argument("--out", default=None, help="where to pull thumbnails (default FOLDER-thumbs)")
    args = p.parse_args()
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise SystemExit("this example needs Pillow: pip install -e '.[examples]'") from None

    if not glob.glob(os.path.join(args.folder, "*.jpg")):
        print(f"no JPEGs in {args.folder}/: making {args.samples}")
        make_samples(args.folder, args.samples)
    if os.environ.get("MESH_PEERS", "").strip():
        mesh.connect()
    else:
        mesh.local(2)
    try:
        # Push all *.jpg: only what is new or changed travels.
        t0 = time.perf_counter()
        report = mesh.files.sync(args.folder, prefix="images/")
        print(f"sync: sent {len(report.sent)} images ({report.bytes_sent / 1e6:.1f} MB), "
              f"{len(report.unchanged)} already there, in {time.perf_counter() - t0:.2f} s")  # fmt: skip
        again = mesh.files.sync(args.folder, prefix="images/")
        print(f"sync again: sent {len(again.sent)}, {len(again.unchanged)} unchanged")

        img_names = [n for n in report.sent + report.unchanged if n.endswith(".jpg")]
        t0 = time.perf_counter()
        jids = [mesh.call(resize_image, name, _files=[name]) for name in img_names]
        thumb_names = [t for thumbs in mesh.result(jids) for t in thumbs]
        nodes = sorted({mesh.info(j).node for j in jids})
        print(f"made {len(thumb_names)} thumbnails in {time.perf_counter() - t0:.2f} s "
              f"on {', '.join(nodes)}")  # fmt: skip

        out = args.out or args.folder.rstrip("/") + "-thumbs"
        for name in thumb_names:  # pull the thumbnails from the store
            mesh.files.get(name, os.path.join(out, os.path.basename(name)))
        print(f"pulled them into {out}/; the store holds {len(mesh.files.list())} files")
    finally:
        mesh.close()


if __name__ == "__main__":
    main()
