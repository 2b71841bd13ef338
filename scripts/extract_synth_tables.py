#!/usr/bin/env python3
"""Builds the generator's lookup tables (engine/src/synth/tables/) from Sparkov sample data.

The generator needs realistic places, names, jobs and merchants. We take them from the
reference files (../shared/data), keep only the vocabulary (no transactions, no card
numbers), and commit the result so a clone without ../shared still builds.

    python3 scripts/extract_synth_tables.py ../shared/data/sparkov-2019h1.csv.gz ...
"""
import csv
import gzip
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "engine" / "src" / "synth" / "tables"


def rows(paths):
    for path in paths:
        with gzip.open(path, "rt", newline="") as f:
            yield from csv.DictReader(f)


def main(paths):
    places, jobs, merchants = set(), set(), set()
    first = {"F": set(), "M": set()}
    last, streets = set(), set()
    for r in rows(paths):
        places.add((r["city"], r["state"], r["zip"], r["lat"], r["long"], r["city_pop"]))
        jobs.add(r["job"])
        merchants.add((r["merchant"], r["category"]))
        first[r["gender"]].add(r["first"])
        last.add(r["last"])
        # "6940 Joseph Throughway" / "7021 Hernandez River Apt. 312": keep the name part.
        m = re.match(r"^\d+ (.*?)(?: (?:Apt\.|Suite) \d+)?$", r["street"])
        if m:
            streets.add(m.group(1))
    OUT.mkdir(parents=True, exist_ok=True)

    def write(name, header, items):
        with open(OUT / name, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            for item in sorted(items):
                w.writerow(item if isinstance(item, tuple) else (item,))

    write("places.csv", ("city", "state", "zip", "lat", "long", "city_pop"), places)
    write("jobs.csv", ("job",), jobs)
    write("merchants.csv", ("merchant", "category"), merchants)
    write("first_names.csv", ("first", "gender"),
          {(n, g) for g, names in first.items() for n in names})
    write("last_names.csv", ("last",), last)
    write("streets.csv", ("street",), streets)
    for name in sorted(p.name for p in OUT.iterdir()):
        print(name, sum(1 for _ in open(OUT / name)) - 1)


if __name__ == "__main__":
    main(sys.argv[1:] or sorted(Path("../shared/data").glob("*.csv.gz")))
