"""The fixed cost of one E-step and one M-step on the catalog's small models, where the whole fit is overhead.

    python benchmarks/bench_overhead.py [--blocks 7] [--calls 300]

A small model's EM step is a few hundred numpy calls on arrays of tens of rows, so its time is
overhead, and the whole fit is that times its hundreds of EM steps (issue #13: each catalog model under
0.5 s). Each model is fitted once as ``declarem fit SPEC --seed 0`` fits it, capturing its last E-step's
and M-step's arguments; then the E-step (``inference.enumeration.expected_statistics``) and the
non-exponential family's M-step (``GeneralFactor.mstep``, the negative binomial's Newton solve) are
called alone, ``--calls`` times in each of ``--blocks`` blocks. The least block's time per call is
printed: on a shared host the least is the cost, the rest is other tenants.
"""

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_model, loadavg, ncpu  # noqa: E402

import declarem  # noqa: E402
from declarem import compiled as compiled_module  # noqa: E402
from declarem.inference import enumeration  # noqa: E402

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")


def least_per_call(call, blocks, calls):
    """The least, over ``blocks`` blocks of ``calls`` calls, of the time per call (microseconds)."""
    call()
    best = float("inf")
    for _ in range(blocks):
        began = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - began) / calls)
    return best * 1e6


def captured_calls(name):
    """The last E-step's and non-exponential M-step's arguments of the model's catalog fit."""
    seen = {}
    estep, mstep = enumeration.expected_statistics, compiled_module.GeneralFactor.mstep

    def recording_estep(*args, **kwargs):
        seen["estep"] = (args, kwargs)
        return estep(*args, **kwargs)

    def recording_mstep(self, *args):
        seen["mstep"] = (self, args)
        return mstep(self, *args)

    enumeration.expected_statistics = recording_estep
    compiled_module.GeneralFactor.mstep = recording_mstep
    try:
        model = declarem.load_model(os.path.join(MODELS, f"{name}.toml"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(os.path.join(MODELS, model.data_info["path"]), seed=0)
    finally:
        enumeration.expected_statistics = estep
        compiled_module.GeneralFactor.mstep = mstep
    return seen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)
    print(f"machine: {ncpu()} CPUs ({cpu_model()}); load average before: {loadavg()}")
    print("| model | E-step (least, us) | non-exponential M-step (least, us) |")
    print("|---|---|---|")
    for name in ("negbin_mixture", "hasselblad", "weibull_mixture"):
        seen = captured_calls(name)
        estep_args, estep_kwargs = seen["estep"]
        estep = least_per_call(lambda: enumeration.expected_statistics(*estep_args, **estep_kwargs),
                               args.blocks, args.calls)
        mstep = ""
        if "mstep" in seen:
            factor, mstep_args = seen["mstep"]
            mstep = f"{least_per_call(lambda: factor.mstep(*mstep_args), args.blocks, args.calls):.0f}"
        print(f"| {name} | {estep:.0f} | {mstep} |")
    print(f"load average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
