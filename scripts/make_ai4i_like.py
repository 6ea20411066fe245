"""Write a machine-failure table made the way the AI4I 2020 predictive-maintenance set was made.

AI4I 2020 (Matzka, UCI) is itself synthetic: its page states how each column and each failure mode
was generated. This script follows those rules, so the tabular recipe's rare-class path (a tuned
decision threshold, precision/recall/F1 of the failures) can be measured where the real file is not
at hand:

    .venv/bin/python scripts/make_ai4i_like.py /tmp/ai4i_like.csv
    .venv/bin/python scripts/quality.py --csv /tmp/ai4i_like.csv:"Machine failure":UDI,"Product ID",TWF,HDF,PWF,OSF,RNF:Type

Columns as in the real file. Failure modes (any one sets `Machine failure`):
  TWF  tool wear failure: some tools fail between 200 and 240 min of wear;
  HDF  heat dissipation: process minus air temperature under 8.6 K at under 1,380 rpm;
  PWF  power: torque x angular speed under 3,500 W or over 9,000 W;
  OSF  overstrain: tool wear x torque over 11,000 (L), 12,000 (M) or 13,000 (H) min Nm;
  RNF  random: 0.1 % of processes.
The marginals (air 300 +- 2 K, process 310 K, 1,540 +- 180 rpm, torque 40 Nm, 3.5 % failures) are close
to the real file's; the joint distribution is this script's reading of the description, not the real data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def make(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    kind = rng.choice(["L", "M", "H"], rows, p=[0.5, 0.3, 0.2])

    def walk(sd: float) -> np.ndarray:  # a random walk scaled to sd: temperatures drift, they do not jump
        w = np.cumsum(rng.normal(0, 1, rows))
        return (w - w.mean()) / w.std() * sd

    air = 300 + walk(2)
    process = 310 + 0.75 * (air - 300) + walk(0.8)
    torque = np.clip(rng.normal(40, 9.2, rows), 3.8, None)
    speed = np.clip(1539 - 15.5 * (torque - 40) + rng.gamma(2.0, 64, rows) - 128, 1168, 2886).round()
    wear, tool, limit = np.zeros(rows), 0.0, rng.uniform(200, 240)
    per_process = np.select([kind == "H", kind == "M"], [5, 3], 2)  # minutes of wear each quality adds
    for i in range(rows):
        tool += per_process[i] * rng.uniform(0.5, 1.5)
        if tool > limit:  # the tool is replaced
            tool, limit = 0.0, rng.uniform(200, 240)
        wear[i] = round(tool)
    power = torque * speed * 2 * np.pi / 60
    modes = {
        "TWF": (wear >= 200) & (rng.random(rows) < 0.06),
        "HDF": (process - air < 8.6) & (speed < 1380),
        "PWF": (power < 3500) | (power > 9000),
        "OSF": wear * torque > np.select([kind == "L", kind == "M"], [11000, 12000], 13000),
        "RNF": rng.random(rows) < 0.001,
    }
    failure = np.logical_or.reduce(list(modes.values()))
    serials = rng.permutation(np.arange(10000, 70000))[:rows]
    return pd.DataFrame({
        "UDI": np.arange(1, rows + 1), "Product ID": [f"{k}{s}" for k, s in zip(kind, serials)], "Type": kind,
        "Air temperature [K]": air.round(1), "Process temperature [K]": process.round(1),
        "Rotational speed [rpm]": speed.astype(int), "Torque [Nm]": torque.round(1), "Tool wear [min]": wear.astype(int),
        "Machine failure": failure.astype(int), **{name: flag.astype(int) for name, flag in modes.items()},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()
    table = make(args.rows, args.seed)
    table.to_csv(args.output, index=False)
    counts = ", ".join(f"{name} {int(table[name].sum())}" for name in ("TWF", "HDF", "PWF", "OSF", "RNF"))
    print(f"{args.output}: {len(table):,} rows, {table['Machine failure'].mean():.1%} failures ({counts})")


if __name__ == "__main__":
    main()
