"""scripts/plot_kernels.py draws a bench.json: one line per keep rule and sparsity, written beside the file."""

from __future__ import annotations

import json

import matplotlib.image as mpimg

from tests.unit.script_module import load_script


def test_plot_writes_a_png_beside_the_benchmark(tmp_path):
    rows = [
        dict(keep_rule=rule, sparsity=s, batch=b, tokens=t, speedup_graph=1.0 + s, byte_ideal=2.0 + s)
        for rule in ("word", "word-fp8")
        for s in (0.5, 0.7)
        for b, t in ((1, 16384), (8, 32768))
    ]
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(dict(meta=dict(device="test GPU"), decode=rows)))
    module = load_script("plot_kernels")
    out = module.plot(bench)
    assert out == tmp_path / "speedup.png"
    image = mpimg.imread(out)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert not module.plt.get_fignums()  # the figure is closed after saving: nothing leaks between calls
