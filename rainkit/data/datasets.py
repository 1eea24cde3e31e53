"""Benchmark datasets: the standard deraining test sets, layout detection, pairing and fingerprints.

A dataset resolves to a list of `Pair`s (a rainy image and, for paired sets, its clean
reference). Files are paired by name or by number, never by sorted position, and a set that is
incomplete, ambiguous, or has a pair of different sizes is refused with one line listing what is
wrong, before any image is processed.

The fingerprint is the sha256 over the sorted sha256 digests of every file used, so two results
can be shown to come from the same bytes whatever the folders were called.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable

from rainkit.data.images import IMAGE_SUFFIXES
from rainkit.errors import DatasetError, ParameterError

PRENET_LAYOUT = "rainy/rain-NNN.png with norain-NNN.png beside rainy/ (PReNet) or in norain/"

# Rainy/clean sub-folder names of the common releases, tried in this order (case-insensitive).
PAIRED_FOLDERS: tuple[tuple[str, str], ...] = (
    ("rainy", "norain"),
    ("rain", "norain"),
    ("input", "target"),  # MPRNet, Restormer
    ("input", "gt"),
    ("rainy_image", "ground_truth"),  # DDN's Rain1400 (Rain12600 test)
    ("rain", "gt"),
    ("rainy", "gt"),
    ("rainy", "clean"),
    ("rain", "clean"),
    ("rainy", "groundtruth"),  # PReNet's test12 (Rain12)
    ("rain", "groundtruth"),
    ("data", "gt"),
    ("lq", "gt"),
)

# PReNet's own test folders keep the clean images beside the rainy/ sub-folder:
# Rain100H/rainy/rain-001.png with Rain100H/norain-001.png.
RAINY_SUBFOLDERS = ("rainy", "rain", "input")

ACCEPTED_LAYOUTS = (
    "rainy/rain-NNN.png with norain-NNN.png beside rainy/ (PReNet), rainy/ + norain/, input/ + target/, "
    "rain/ + norain/, "
    "rainy_image/ + ground_truth/ (Rain1400: N_K.jpg, N.jpg), or flat GT-RAIN files "
    "(SCENE-R-NNN.png with one SCENE-C-000.png per scene)"
)

_MAX_LISTED = 8


@dataclass(frozen=True)
class DatasetSpec:
    """A registered test set: where to look for it and what a complete copy holds."""

    name: str
    title: str
    folder_names: tuple[str, ...]  # looked for under the data root, case-insensitively
    rainy_count: int
    clean_count: int
    layout: str
    numbers: range | None = None  # image numbers of number-paired sets
    versions: int = 1  # rainy versions of each clean image
    sizes: tuple[tuple[int, int], ...] = ()  # accepted (width, height); empty: any

    def accepts_size(self, size: tuple[int, int]) -> bool:
        return not self.sizes or size in self.sizes


_RAIN100_RELEASE = ((481, 321), (321, 481))
# Some papers (PReNet's test folders among them) evaluate on 480x320 crops of the release; both
# score differently, so the JSON records which sizes were used (`sizes`).
_RAIN100_CROP = ((480, 320), (320, 480))

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("rain100l", "Rain100L (Yang et al., CVPR 2017)",
                    ("rain100l", "rain100l_test", "rain_data_test_light"), 100, 100, PRENET_LAYOUT,
                    numbers=range(1, 101), sizes=_RAIN100_RELEASE + _RAIN100_CROP),
        DatasetSpec("rain100h", "Rain100H (Yang et al., CVPR 2017)",
                    ("rain100h", "rain100h_test", "rain_data_test_heavy"), 100, 100, PRENET_LAYOUT,
                    numbers=range(1, 101), sizes=_RAIN100_RELEASE + _RAIN100_CROP),
        DatasetSpec("rain12", "Rain12 (Li et al., CVPR 2016)", ("rain12", "test12"), 12, 12, PRENET_LAYOUT,
                    numbers=range(1, 13)),
        DatasetSpec("rain1400", "Rain1400, the Rain12600 test split (Fu et al., CVPR 2017)",
                    ("rain1400", "rain12600", "rain12600_test", "rain1400_test"), 1400, 100,
                    "rainy_image/N_K.jpg + ground_truth/N.jpg (K = 1..14)", versions=14),
    )
}


@dataclass(frozen=True)
class Pair:
    id: str  # the rainy file's stem: unique within a dataset
    rainy: Path
    clean: Path | None  # None for sets without ground truth


@dataclass
class Dataset:
    """A resolved, checked set of pairs. Build it with `resolve_dataset`, `paired_folders` or `image_folder`."""

    name: str
    title: str
    root: Path
    rainy_dir: Path
    clean_dir: Path | None
    layout: str
    pairing: str  # how files were paired: name, number, rain1400, gt-rain, or none
    pairs: list[Pair]
    sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> number of rainy images
    spec: DatasetSpec | None = None

    @property
    def has_reference(self) -> bool:
        return self.clean_dir is not None

    def __len__(self) -> int:
        return len(self.pairs)

    def subset(self, limit: int | None) -> "Dataset":
        """The first `limit` pairs (in natural order), e.g. for a quick run."""
        if limit is None or limit >= len(self.pairs):
            return self
        if limit < 1:
            raise ParameterError("limit", f"must be at least 1, got {limit}")
        pairs = self.pairs[:limit]
        return Dataset(self.name, self.title, self.root, self.rainy_dir, self.clean_dir, self.layout, self.pairing,
                       pairs, _size_counts(pairs), self.spec)

    def files(self) -> list[Path]:
        seen = {p.rainy for p in self.pairs} | {p.clean for p in self.pairs if p.clean is not None}
        return sorted(seen)

    @cached_property
    def digests(self) -> dict[Path, str]:
        """sha256 of every file used."""
        return {path: _file_digest(path) for path in self.files()}

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the sorted file digests: equal for the same bytes, whatever the names."""
        return hashlib.sha256("\n".join(sorted(self.digests.values())).encode()).hexdigest()

    def pair_digest(self, pair: Pair) -> str:
        parts = [self.digests[pair.rainy]] + ([self.digests[pair.clean]] if pair.clean is not None else [])
        return hashlib.sha256(":".join(parts).encode()).hexdigest()

    def describe(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "root": str(self.root),
            "rainy_dir": str(self.rainy_dir),
            "clean_dir": str(self.clean_dir) if self.clean_dir is not None else None,
            "layout": self.layout,
            "pairing": self.pairing,
            "images": len(self.pairs),
            "files": len(self.files()),
            "sizes": dict(self.sizes),
            "fingerprint": self.fingerprint,
        }


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    # Local rather than rainkit.hub's helper: importing rainkit.hub loads torch, which a
    # benchmark of the rainy input alone never needs.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    # A file that cannot be read still gets a digest, so the set's fingerprint and the other
    # pairs' cache keys stand; the benchmark reports the file when it comes to score it.
    try:
        return _sha256_file(path)
    except OSError as exc:
        return hashlib.sha256(f"unreadable {path.name}: {exc.strerror or exc}".encode()).hexdigest()


def _natural_key(text: str) -> list:
    return [int(token) if token.isdigit() else token.lower() for token in re.split(r"(\d+)", text)]


def _listing(items: Iterable, limit: int = _MAX_LISTED) -> str:
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder` (not hidden), in natural order."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: _natural_key(p.name))


# --- pairing rules -------------------------------------------------------------------------------

KeyFn = Callable[[Path], object]


@dataclass(frozen=True)
class PairingRule:
    name: str
    rainy_key: KeyFn  # returns None when a file does not fit the rule
    clean_key: KeyFn
    many_to_one: bool  # several rainy versions share one clean image


def _single_number(path: Path) -> int | None:
    """The one number in a file name (`rain-007` -> 7); JORDER's scale suffix is ignored
    (`norain-7x2` -> 7). None when there is no number or several."""
    stem = re.sub(r"x\d+$", "", path.stem, flags=re.IGNORECASE)
    numbers = re.findall(r"\d+", stem)
    return int(numbers[0]) if len(numbers) == 1 else None


def _regex_key(pattern: str, convert=str) -> KeyFn:
    compiled = re.compile(pattern)

    def key(path: Path):
        match = compiled.fullmatch(path.stem)
        return convert(match.group(1)) if match else None

    return key


RULE_NAME = PairingRule("name", lambda p: p.stem.lower(), lambda p: p.stem.lower(), False)
RULE_NUMBER = PairingRule("number", _single_number, _single_number, False)
RULE_RAIN1400 = PairingRule("rain1400", _regex_key(r"(\d+)_\d+", int), _regex_key(r"(\d+)", int), True)
RULE_GTRAIN = PairingRule("gt-rain", _regex_key(r"(.+)-R-\d+"), _regex_key(r"(.+)-C-\d+"), True)


def choose_rule(rainy: list[Path], clean: list[Path]) -> PairingRule:
    """The rule that fits every file on both sides: same names, then the known numbered schemes."""
    if {RULE_NAME.rainy_key(p) for p in rainy} == {RULE_NAME.clean_key(p) for p in clean}:
        return RULE_NAME
    for rule in (RULE_RAIN1400, RULE_GTRAIN, RULE_NUMBER):
        if all(rule.rainy_key(p) is not None for p in rainy) and all(rule.clean_key(p) is not None for p in clean):
            return rule
    if {RULE_NAME.rainy_key(p) for p in rainy} & {RULE_NAME.clean_key(p) for p in clean}:
        return RULE_NAME
    raise DatasetError(
        f"cannot pair rainy and clean files by name or number (e.g. '{rainy[0].name}' and '{clean[0].name}'): "
        "use the same names on both sides, one number per name (rain-001.png / norain-001.png), "
        "N_K / N (Rain1400) or SCENE-R-NNN / SCENE-C-NNN (GT-RAIN)"
    )


def _index(files: list[Path], key: KeyFn, side: str, folder: Path, unique: bool) -> dict[object, list[Path]]:
    groups: dict[object, list[Path]] = defaultdict(list)
    for path in files:
        groups[key(path)].append(path)
    if unique:
        clashes = [group for group in groups.values() if len(group) > 1]
        if clashes:
            raise DatasetError(
                f"{folder}: ambiguous {side} files, several match the same image: "
                + _listing(" / ".join(p.name for p in group) for group in clashes)
            )
    return groups


def pair_files(rainy: list[Path], clean: list[Path], rainy_dir: Path, clean_dir: Path,
               spec: DatasetSpec | None = None, what: str = "this set") -> tuple[list[Pair], PairingRule]:
    """Pair rainy files with clean ones by name or number; refuse an incomplete or ambiguous set."""
    if not rainy:
        raise DatasetError(f"{rainy_dir}: no rainy images found")
    if not clean:
        raise DatasetError(f"{clean_dir}: no clean images found")
    rule = choose_rule(rainy, clean)
    rainy_groups = _index(rainy, rule.rainy_key, "rainy", rainy_dir, unique=not rule.many_to_one)
    clean_groups = _index(clean, rule.clean_key, "clean", clean_dir, unique=True)

    problems: list[str] = []
    if spec is not None and spec.numbers is not None and rule is RULE_NUMBER:
        missing_rainy = [n for n in spec.numbers if n not in rainy_groups]
        missing_clean = [n for n in spec.numbers if n not in clean_groups]
        if missing_rainy:
            problems.append(f"no rainy image for number(s) {_listing(missing_rainy)} in {rainy_dir}")
        if missing_clean:
            problems.append(f"no clean image for number(s) {_listing(missing_clean)} in {clean_dir}")
        unexpected = [p.name for k, g in sorted(rainy_groups.items()) if k not in spec.numbers for p in g]
        unexpected += [p.name for k, g in sorted(clean_groups.items()) if k not in spec.numbers for p in g]
        if unexpected:
            problems.append(f"unexpected file(s) {_listing(unexpected)}")
    else:
        unmatched_rainy = [p.name for k, g in rainy_groups.items() if k not in clean_groups for p in g]
        unmatched_clean = [p.name for k, g in clean_groups.items() if k not in rainy_groups for p in g]
        if unmatched_rainy:
            problems.append(f"no clean image in {clean_dir} for {_listing(unmatched_rainy)}")
        if unmatched_clean:
            problems.append(f"no rainy image in {rainy_dir} for {_listing(unmatched_clean)}")
    if spec is not None and not problems:
        if spec.versions > 1:
            short = [f"{g[0].name} ({len(rainy_groups.get(k, []))})" for k, g in clean_groups.items()
                     if len(rainy_groups.get(k, [])) != spec.versions]
            if short:
                problems.append(f"expected {spec.versions} rainy versions of each clean image, not so for {_listing(short)}")
        if len(rainy) != spec.rainy_count or len(clean) != spec.clean_count:
            problems.append(f"expected {spec.rainy_count} rainy and {spec.clean_count} clean images, "
                            f"found {len(rainy)} and {len(clean)}")
    if problems:
        raise DatasetError(f"{what} is incomplete: " + "; ".join(problems))

    pairs = []
    for key, group in rainy_groups.items():
        for path in group:
            pairs.append(Pair(path.stem, path, clean_groups[key][0]))
    _check_unique_ids(pairs, rainy_dir)
    pairs.sort(key=lambda p: _natural_key(p.rainy.name))
    return pairs, rule


def _check_unique_ids(pairs: list[Pair], folder: Path) -> None:
    counts = Counter(p.id for p in pairs)
    clashes = [name for name, n in counts.items() if n > 1]
    if clashes:
        raise DatasetError(f"{folder}: several rainy files share the name(s) {_listing(clashes)} (different extensions?)")


# --- sizes -----------------------------------------------------------------------------------------

def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as `read_image` will decode it (EXIF rotation applied), from the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.format in ("JPEG", "TIFF", "WEBP"):  # the formats read_image rotates
                if int(image.getexif().get(0x0112, 1) or 1) in (5, 6, 7, 8):
                    width, height = height, width
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"{path}: cannot be read as an image ({exc})") from None
    return width, height


UNREADABLE = "unreadable"  # the `sizes` entry counting rainy files whose header cannot be read


def _header_sizes(paths: Iterable[Path]) -> dict[Path, tuple[int, int] | None]:
    """(width, height) per file; None for a file that cannot be read, which is left for the
    benchmark to report with the others rather than stopping the whole set here."""
    sizes: dict[Path, tuple[int, int] | None] = {}
    for path in paths:
        try:
            sizes[path] = image_size(path)
        except DatasetError:
            sizes[path] = None
    return sizes


def _size_counts(pairs: list[Pair], sizes: dict[Path, tuple[int, int] | None] | None = None) -> dict[str, int]:
    sizes = sizes if sizes is not None else _header_sizes(p.rainy for p in pairs)
    counts: Counter = Counter()
    for pair in pairs:
        size = sizes[pair.rainy]
        counts[_fmt(size) if size is not None else UNREADABLE] += 1
    return dict(sorted(counts.items()))


def check_sizes(pairs: list[Pair], spec: DatasetSpec | None, what: str) -> dict[str, int]:
    """Refuse pairs whose two images differ in size (and sizes a registered set never has);
    files that cannot be read are counted, not refused."""
    sizes = _header_sizes({p.rainy for p in pairs} | {p.clean for p in pairs if p.clean is not None})
    readable = [p for p in pairs if sizes[p.rainy] is not None and (p.clean is None or sizes[p.clean] is not None)]
    mismatched = [f"{p.rainy.name} is {_fmt(sizes[p.rainy])} but {p.clean.name} is {_fmt(sizes[p.clean])}"
                  for p in readable if p.clean is not None and sizes[p.rainy] != sizes[p.clean]]
    if mismatched:
        raise DatasetError(f"{what}: image sizes differ within pairs: {_listing(mismatched, 5)}")
    if spec is not None and spec.sizes:
        odd = [f"{p.rainy.name} ({_fmt(sizes[p.rainy])})" for p in readable if not spec.accepts_size(sizes[p.rainy])]
        if odd:
            accepted = ", ".join(_fmt(s) for s in spec.sizes)
            raise DatasetError(f"{what}: {spec.name} images are {accepted}, not so for {_listing(odd, 5)}")
    return _size_counts(pairs, sizes)


def _fmt(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# --- layouts -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    rainy: list[Path]
    clean: list[Path]
    rainy_dir: Path
    clean_dir: Path
    description: str


def _subfolders(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _image_dir(folder: Path) -> Path:
    """`folder`, or its only sub-folder when it holds no images itself (JORDER's `rain/X2/`)."""
    subfolders = _subfolders(folder)
    if len(subfolders) == 1 and not list_images(folder):
        return next(iter(subfolders.values()))
    return folder


def _flat_layout(folder: Path) -> Layout | None:
    """Rainy and clean files side by side: GT-RAIN scenes, or rain-NNN / norain-NNN prefixes."""
    files = list_images(folder)
    if not files:
        return None
    gt_rainy = [p for p in files if RULE_GTRAIN.rainy_key(p) is not None]
    gt_clean = [p for p in files if RULE_GTRAIN.clean_key(p) is not None]
    if gt_rainy and gt_clean and len(gt_rainy) + len(gt_clean) == len(files):
        return Layout(gt_rainy, gt_clean, folder, folder, "flat GT-RAIN (SCENE-R-NNN + SCENE-C-NNN)")
    rainy = [p for p in files if re.match(r"(rain|rainy)[-_]", p.stem, re.IGNORECASE)]
    clean = [p for p in files if re.match(r"(norain|clean|gt)[-_]", p.stem, re.IGNORECASE)]
    if rainy and clean and len(rainy) + len(clean) == len(files):
        return Layout(rainy, clean, folder, folder, "flat rain-NNN + norain-NNN")
    return None


def detect_layout(folder: Path, depth: int = 2) -> Layout:
    """Find the rainy and clean files of a dataset folder (also one level down, e.g. a `test/` folder)."""
    subfolders = _subfolders(folder)
    for rainy_name, clean_name in PAIRED_FOLDERS:
        if rainy_name in subfolders and clean_name in subfolders:
            rainy_dir, clean_dir = _image_dir(subfolders[rainy_name]), _image_dir(subfolders[clean_name])
            return Layout(list_images(rainy_dir), list_images(clean_dir), rainy_dir, clean_dir,
                          f"{rainy_dir.relative_to(folder)}/ + {clean_dir.relative_to(folder)}/")
    clean_here = list_images(folder)
    for rainy_name in RAINY_SUBFOLDERS:
        if rainy_name in subfolders and clean_here:
            rainy_dir = _image_dir(subfolders[rainy_name])
            rainy = list_images(rainy_dir)
            if rainy:
                return Layout(rainy, clean_here, rainy_dir, folder,
                              f"{rainy_dir.relative_to(folder)}/ + clean images beside it (PReNet)")
    flat = _flat_layout(folder)
    if flat is not None:
        return flat
    if depth > 1 and len(subfolders) == 1 and not list_images(folder):
        return detect_layout(next(iter(subfolders.values())), depth - 1)
    found = ", ".join(sorted(p.name + "/" for p in subfolders.values())) or "no sub-folders"
    raise DatasetError(f"{folder}: no known dataset layout ({found}); expected {ACCEPTED_LAYOUTS}")


# --- resolution ----------------------------------------------------------------------------------

def user_data_dir() -> Path:
    """$XDG_DATA_HOME/rainkit/datasets, else ~/.local/share/rainkit/datasets."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "rainkit" / "datasets"


def data_roots(data_root: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """Folders to look for datasets in, each with where it came from: --data-root alone if given,
    else every folder of RAINKIT_DATA (os.pathsep-separated), then the user data folder."""
    if data_root is not None:
        return [(Path(data_root).expanduser(), "--data-root")]
    roots = [(Path(p).expanduser(), "RAINKIT_DATA") for p in os.environ.get("RAINKIT_DATA", "").split(os.pathsep)
             if p.strip()]
    return roots + [(user_data_dir(), "user data folder")]


def _find_folder(names: Iterable[str], roots: list[tuple[Path, str]]) -> Path | None:
    wanted = [n.lower() for n in names]
    for root, _ in roots:
        if not root.is_dir():
            continue
        if root.name.lower() in wanted:  # the root is the dataset folder itself
            return root
        children = _subfolders(root)
        for name in wanted:
            if name in children:
                return children[name]
    return None


def _build(name: str, title: str, root: Path, layout: Layout, spec: DatasetSpec | None) -> Dataset:
    what = f"{name} at {root}"
    pairs, rule = pair_files(layout.rainy, layout.clean, layout.rainy_dir, layout.clean_dir, spec, what)
    sizes = check_sizes(pairs, spec, what)
    return Dataset(name, title, root, layout.rainy_dir, layout.clean_dir, layout.description, rule.name,
                   pairs, sizes, spec)


def resolve_dataset(name: str, data_root: str | os.PathLike | None = None) -> Dataset:
    """A registered set (`rain100l`, ...) found under the data root, or any dataset folder by name or path."""
    key = name.strip().lower()
    roots = data_roots(data_root)
    spec = DATASETS.get(key)
    if spec is not None:
        folder = _find_folder(spec.folder_names, roots)
        if folder is None:
            looked = "; ".join(f"{root} ({source})" for root, source in roots)
            raise DatasetError(
                f"dataset '{spec.name}' not found: no folder named {' or '.join(spec.folder_names)} in {looked}; "
                f"expected layout {spec.layout}; point `data_root` or RAINKIT_DATA at the folder holding it"
            )
        try:
            layout = detect_layout(folder)
        except DatasetError as exc:
            raise DatasetError(f"{exc} ({spec.name} is expected as {spec.layout})") from None
        return _build(spec.name, spec.title, folder, layout, spec)
    path = Path(name).expanduser()
    folder = path if path.is_dir() else _find_folder([name], roots)
    if folder is None:
        known = ", ".join(DATASETS)
        raise DatasetError(f"unknown dataset '{name}' (known: {known}); or give a dataset folder, "
                           "`pairs` RAINY_DIR CLEAN_DIR, or `images` DIR")
    return _build(folder.name, f"{folder.name} (folder)", folder, detect_layout(folder), None)


def paired_folders(rainy_dir: str | os.PathLike, clean_dir: str | os.PathLike) -> Dataset:
    """Any two folders of rainy and clean images, paired by name or number."""
    rainy_dir, clean_dir = Path(rainy_dir).expanduser(), Path(clean_dir).expanduser()
    if rainy_dir.resolve() == clean_dir.resolve():
        layout = _flat_layout(rainy_dir)
        if layout is None:
            raise DatasetError(f"{rainy_dir}: rainy and clean files in one folder must be GT-RAIN "
                               "(SCENE-R-NNN / SCENE-C-NNN) or rain-NNN / norain-NNN")
    else:
        layout = Layout(list_images(rainy_dir), list_images(clean_dir), rainy_dir, clean_dir,
                        f"{rainy_dir.name}/ + {clean_dir.name}/")
    name = rainy_dir.name if rainy_dir.resolve() == clean_dir.resolve() else f"{rainy_dir.name}+{clean_dir.name}"
    return _build(name, f"paired folders {rainy_dir.name}/ + {clean_dir.name}/", rainy_dir, layout, None)


def image_folder(folder: str | os.PathLike) -> Dataset:
    """Rainy images without ground truth (real rain): scored with no-reference metrics only."""
    folder = Path(folder).expanduser()
    files = list_images(folder)
    if not files:
        raise DatasetError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    pairs = [Pair(p.stem, p, None) for p in files]
    _check_unique_ids(pairs, folder)
    return Dataset(folder.name, f"images in {folder}", folder, folder, None, "images", "none", pairs,
                   _size_counts(pairs))
