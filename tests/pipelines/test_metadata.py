"""What the Dagster UI is given to render: Markdown excerpts cut only between blocks, with no link that leads nowhere,
and contact sheets (JPEG data: URLs) within their stated size."""

import base64
import io
import re

import numpy as np
from PIL import Image

from medlvr.pipelines.corpus.metadata import (CONTACT_SHEET_MAX_BYTES, MARKDOWN_MAX_CHARS, contact_sheet,
                                              drop_relative_links, markdown_excerpt, md_image)

CARD = """---
license: other
---

# Corpus

Intro with a [homepage](https://example.org/kits) and the [manifest](shards/_manifest.json).

## Counts

| split | pairs |
|---|---:|
{rows}

## Sources

| dataset | licence |
|---|---|
| [KiTS](https://kits.example) | CC BY-NC-SA 4.0 |

## Plots

![counts](counts.png)
"""


def _card(n_rows: int) -> str:
    return CARD.replace("{rows}", "\n".join(f"| split{i} | {i} |" for i in range(n_rows)))


def _png(h=60, w=80, seed=0, noise=False) -> bytes:
    """A grey gradient (as smooth as a scan) or, with `noise`, random pixels (the worst case for JPEG)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w)) if noise else np.add.outer(np.arange(h), np.arange(w)) + seed * 9
    buf = io.BytesIO()
    Image.fromarray((img % 200).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_relative_links_become_text_absolute_links_stay():
    text = "[CSV](tables/01.csv) ![fig](figures/f3.png) [site](https://x.org/a) [m](mailto:a@b.c) [top](#t)"
    assert drop_relative_links(text) == ("CSV (image `figures/f3.png`, a file next to the document) "
                                         "[site](https://x.org/a) [m](mailto:a@b.c) [top](#t)")


def test_whole_card_fits_without_front_matter_or_relative_links():
    out = markdown_excerpt(_card(3), where="/corpus/card/README.md")
    assert not out.startswith("---") and "license:" not in out
    assert "[homepage](https://example.org/kits)" in out and "[KiTS](https://kits.example)" in out
    assert "shards/_manifest.json)" not in out and "(counts.png)" not in out and "(image `counts.png`" in out
    assert "Not shown" not in out  # nothing left out


def test_excerpt_is_cut_between_blocks_never_inside_a_table_and_says_what_is_missing():
    text = _card(400)  # the Counts table alone is over the limit
    out = markdown_excerpt(text, max_chars=2000, where="/corpus/card/README.md")
    assert len(out) <= 2000
    assert "# Corpus" in out and "| split0 |" not in out  # the table did not fit: none of its rows is shown
    assert out.splitlines()[-1].startswith("*Not shown here (limit 2000 characters): Counts")
    assert "`/corpus/card/README.md`" in out.splitlines()[-1]
    # a smaller table that fits is shown whole, the section after it is named as left out
    limit = len(_card(60).split("## Sources")[0]) + 260  # room for the Counts table, not for Sources
    out = markdown_excerpt(_card(60), max_chars=limit)
    body = [line for line in out.splitlines() if re.match(r"\| split\d", line)]
    assert len(body) == 60 and body[-1] == "| split59 | 59 |"
    assert "Sources, Plots" in out.splitlines()[-1]
    for limit in range(300, 3000, 97):  # at any limit: every table row shown is a whole row of the original
        cut = markdown_excerpt(_card(60), max_chars=limit)
        assert len(cut) <= limit
        assert all(line in text for line in cut.splitlines()[:-1] if line.startswith("|"))
        assert cut.count("[") == cut.count("]")  # no link cut in half


def test_contact_sheet_is_a_jpeg_within_its_cap_with_the_boxes_drawn():
    items = [(_png(seed=i), [[10, 10, 50, 40]], f"item {i}") for i in range(8)]
    jpeg = contact_sheet(items)
    assert len(jpeg) <= CONTACT_SHEET_MAX_BYTES
    with Image.open(io.BytesIO(jpeg)) as im:
        assert im.format == "JPEG" and im.width >= 4 * 48
        rgb = np.asarray(im.convert("RGB")).astype(int)
    yellow = (rgb[..., 0] > 180) & (rgb[..., 1] > 180) & (rgb[..., 2] < 90)
    assert yellow.sum() > 50  # the boxes (yellow) are drawn on the grey images
    noisy = contact_sheet([(_png(seed=i, noise=True), [], "") for i in range(8)])
    assert noisy is not None and len(noisy) <= CONTACT_SHEET_MAX_BYTES  # shrinks (or drops tiles) until it fits
    small = contact_sheet(items, max_bytes=3000)
    assert small is not None and len(small) <= 3000
    assert contact_sheet([]) is None
    value = md_image(jpeg, "busi: images [with] boxes").value
    m = re.fullmatch(r"!\[([^\]]*)\]\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)", value)
    assert m and base64.b64decode(m.group(2)) == jpeg and "[" not in m.group(1)
    assert len(value) < CONTACT_SHEET_MAX_BYTES * 4 // 3 + 100 < MARKDOWN_MAX_CHARS * 2
