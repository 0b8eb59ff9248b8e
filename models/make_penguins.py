"""Build models/penguins.csv, the data of models/penguins.toml, from the Palmer penguins data.

    pip download palmerpenguins==0.1.6 --no-deps -d /tmp/pp      # only to rebuild; the CSV is committed
    python models/make_penguins.py --source /tmp/pp/palmerpenguins-0.1.6-py3-none-any.whl
    python models/make_penguins.py                # reads the installed palmerpenguins package instead

Nothing is downloaded when this script runs: it reads a local copy of the package's data file
(``palmerpenguins/data/penguins.csv``), from the wheel, from an unpacked file, or from the installed package.

Source: the PyPI package ``palmerpenguins`` 0.1.6 (M. C. Nakhaee's Python port; its code is MIT licensed),
which ships the ``penguins`` table of A. M. Horst, A. P. Hill and K. B. Gorman, "palmerpenguins: Palmer
Archipelago (Antarctica) penguin data", R package version 0.1.0, 2020, doi:10.5281/zenodo.3960218. The
original data are K. B. Gorman, T. D. Williams and W. R. Fraser, "Ecological sexual dimorphism and
environmental variability within a community of Antarctic penguins (genus Pygoscelis)", PLoS ONE 9(3):
e90081, 2014, doi:10.1371/journal.pone.0090081, collected by Dr. Kristen Gorman with the Palmer Station
Long Term Ecological Research Program. The data are released under CC0 (no rights reserved), in accordance
with the Palmer Station LTER data policy, so the derived CSV may be redistributed here.

The source file has 344 rows (one penguin each: 152 Adelie, 68 Chinstrap, 124 Gentoo) and writes a missing
value as ``NA``. Its sha256 is checked below, so a rebuild from another release fails loudly.

Processing (deterministic; no row is dropped, reordered or imputed):
  * species      Adelie -> 0, Chinstrap -> 1, Gentoo -> 2 (kept for checking the clustering; no node of
                 penguins.toml reads it, and declarem ignores columns that no node reads);
  * bill_length_mm, bill_depth_mm, flipper_length_mm: copied as written;
  * body_mass_kg: body_mass_g / 1000, exactly (decimal arithmetic), so the four measurements have
                 comparable scales (standard deviations of about 5.5, 2.0, 14 and 0.8);
  * sex          female -> 0, male -> 1;
  * ``NA`` -> an empty cell (declarem reads an empty cell as a missing value). island and year are left out.

The result has 2 rows with all four measurements and sex missing (an Adelie and a Gentoo) and 9 more with
only sex missing: 2 * 5 + 9 = 19 missing model cells.
"""

import argparse
import csv
import decimal
import hashlib
import importlib.util
import io
import os
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
MEMBER = "palmerpenguins/data/penguins.csv"
SOURCE_SHA256 = "f204db2c753b0937caac3cb35258562c14f073e4bbc76be24b4c51ce22767a93"   # 0.1.6's penguins.csv
SPECIES = {"Adelie": "0", "Chinstrap": "1", "Gentoo": "2"}
SEX = {"female": "0", "male": "1"}
COLUMNS = ["species", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_kg", "sex"]
MISSING = "NA"


def read_source(source):
    """The bytes of the package's penguins.csv: from a wheel, a CSV file, or the installed package."""
    if source is None:
        spec = importlib.util.find_spec("palmerpenguins")       # found without importing it (it needs pandas)
        if spec is None or not spec.submodule_search_locations:
            sys.exit("make_penguins: the 'palmerpenguins' package is not installed; pass --source "
                     "(the wheel from `pip download palmerpenguins==0.1.6 --no-deps`, or its penguins.csv)")
        source = os.path.join(list(spec.submodule_search_locations)[0], "data", "penguins.csv")
    if source.endswith(".whl"):
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(MEMBER)
    with open(source, "rb") as handle:
        return handle.read()


def kilograms(grams):
    value = decimal.Decimal(grams) / 1000
    return format(value.normalize(), "f")


def convert(raw):
    """The rows of penguins.csv as COLUMNS, missing values as empty strings."""
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
    out = []
    for row in rows:
        def cell(name, convert=lambda text: text):
            text = row[name].strip()
            return "" if text == MISSING else convert(text)
        out.append([SPECIES[row["species"]], cell("bill_length_mm"), cell("bill_depth_mm"),
                    cell("flipper_length_mm"), cell("body_mass_g", kilograms), cell("sex", SEX.__getitem__)])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="the palmerpenguins wheel or its data/penguins.csv "
                                         "(default: the installed package's)")
    parser.add_argument("--out", default=os.path.join(HERE, "penguins.csv"))
    args = parser.parse_args(argv)
    raw = read_source(args.source)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SOURCE_SHA256:
        sys.exit(f"make_penguins: the source's sha256 is {digest}, not palmerpenguins 0.1.6's {SOURCE_SHA256}")
    rows = convert(raw)
    with open(args.out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    missing = [sum(row[j] == "" for row in rows) for j in range(len(COLUMNS))]
    print(f"{len(rows)} rows; missing cells per column: "
          + ", ".join(f"{name} {count}" for name, count in zip(COLUMNS, missing)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
