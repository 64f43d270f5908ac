"""Helpers the benchmark scripts share (model shapes, synthetic kernel inputs, timing); torch/triton only, so the
scripts run on a bare GPU machine."""
