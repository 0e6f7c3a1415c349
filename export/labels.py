"""ImageNet-1k class labels: index, wnid and a human-readable name."""

from __future__ import annotations

from pathlib import Path


def imagenet_labels(wnids_file: Path, lemmas_file: Path) -> list[dict[str, object]]:
    """Return one entry per class in class-index order.

    The label is the first WordNet lemma ("tabby" for "tabby, tabby cat");
    the wnid disambiguates the few lemmas that name two classes ("crane").
    """
    wnids = wnids_file.read_text().split()
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise ValueError(f"{wnids_file.name} must list 1000 distinct wnids")
    lemmas = {}
    for line in lemmas_file.read_text().splitlines():
        wnid, _, names = line.partition("\t")
        lemmas[wnid] = names.split(",")[0].strip()
    missing = [wnid for wnid in wnids if not lemmas.get(wnid)]
    if missing:
        raise ValueError(f"no lemma for {', '.join(missing[:5])}")
    return [
        {"index": index, "wnid": wnid, "label": lemmas[wnid]}
        for index, wnid in enumerate(wnids)
    ]
