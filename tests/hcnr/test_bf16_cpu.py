"""``--dtype bfloat16`` on the CPU: bf16 matmuls in the Fisher pass (attention and the score identity included),
float32 sums, and a patch that selects almost the same neurons as float32 (issue 13 asks >= 95% on a real pair)."""

import json

import pytest
import torch

from benchmarks.patch_speed import neuron_overlap, selected_neurons
from surgery.hcnr.fisher import LayerFisher, batched_column_scores
from surgery.hcnr.options import ComputeOptions, PatchOptions
from surgery.hcnr.pipeline import make_patch
from surgery.hcnr.skeleton import attention_kernels
from surgery.linear_layers import LinearLayer
from surgery.patchfile import read_manifest


def test_score_identity_in_bf16_sums_in_float32():
    g = torch.Generator().manual_seed(0)
    x, d = torch.randn(2, 40, 64, generator=g), torch.randn(2, 40, 32, generator=g)
    exact = batched_column_scores(x.double(), d.double())
    got = batched_column_scores(x.bfloat16(), d.bfloat16())
    assert got.dtype == torch.float32  # the product with x and the token sum do not round in bf16
    rel = ((got.double() - exact).abs() / exact.abs()).max()
    assert rel < 0.05, rel  # bf16 inputs: a few parts in a thousand per entry, not more
    assert torch.equal(batched_column_scores(x, d), ((d @ d.transpose(1, 2) @ x) * x).sum(1))  # float32 as before


def test_attention_kernels_leave_float32_and_gpus_alone():
    cpu = torch.device("cpu")
    with attention_kernels(cpu, torch.bfloat16):
        assert torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()  # restored on exit
    for device, dtype in ((cpu, torch.float32), (torch.device("cuda"), torch.bfloat16)):
        with attention_kernels(device, dtype):
            assert torch.backends.cuda.flash_sdp_enabled()
    with attention_kernels(cpu, torch.bfloat16, backward=False):  # forward-only passes keep flash (faster there)
        assert torch.backends.cuda.flash_sdp_enabled()


def test_layer_fisher_in_bf16_is_close_to_float32():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 24)
    x = torch.randn(3, 10, 48)
    live = torch.ones(3, 10, dtype=torch.bool)
    live[2, 7:] = False  # padding adds nothing
    layers = [LinearLayer("0", "0.weight", "", 24, 48, False)]  # the Sequential's one layer, by hand
    scores = {}
    for dtype in (torch.float32, torch.bfloat16):
        mod = torch.nn.Sequential(lin).to(dtype)
        acc = LayerFisher(layers, dict(mod.named_modules()), rows=True)
        acc.live = live
        with acc.hooks():
            mod(x.to(dtype).requires_grad_(True)).float().pow(2).sum().backward()
        scores[dtype] = acc.tensors()
    assert set(scores[torch.float32]) == {"0.weight::cols", "0.weight::rows"}
    for key, want in scores[torch.float32].items():
        got = scores[torch.bfloat16][key]
        assert got.dtype == torch.float64
        assert ((got - want).abs() / want.abs().clamp(min=1e-12)).max() < 0.1, key


@pytest.mark.parametrize("options", [{}, {"compensation": "protect", "r_iw": 0.125, "r_cw": 0.8}])
def test_bf16_patch_on_cpu_selects_the_float32_neurons(options, tiny_pair, calib, tmp_path):
    base, sft, _moved = tiny_pair
    paths = {}
    for dtype in ("float32", "bfloat16"):
        paths[dtype] = tmp_path / f"{dtype}.safetensors"
        make_patch(
            str(sft), str(base), *calib, paths[dtype], PatchOptions(**options), compute=ComputeOptions("cpu", dtype)
        )
    overlap = neuron_overlap(selected_neurons(paths["float32"]), selected_neurons(paths["bfloat16"]))
    assert overlap.share >= 0.95, overlap  # measured: 100% on this pair (95.3% on the SmolLM2 pair)
    assert overlap.matrices_both == overlap.matrices_reference
    assert read_manifest(paths["bfloat16"]).compute["dtype"] == "bfloat16"
    report = json.loads(paths["bfloat16"].with_name("bfloat16.safetensors.report.json").read_text())
    assert report["dtype"] == "bfloat16" and report["device"] == "cpu"
