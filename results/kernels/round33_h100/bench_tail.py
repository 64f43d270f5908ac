"""scripts/bench_kernels.py with decode.TAIL_SPLITS on (its arguments as given): the default-launch bench of the
tail plan before it is the default. Usage: python3 results/kernels/round33_h100/bench_tail.py ARGS..."""
import runpy, sys
from pathlib import Path
sys.path.insert(0, str(Path.cwd())); sys.path.insert(0, str(Path.cwd() / "scripts"))
from mustafar.kernels import decode

decode.TAIL_SPLITS = True
sys.argv = ["scripts/bench_kernels.py", *sys.argv[1:]]
runpy.run_path("scripts/bench_kernels.py", run_name="__main__")
