"""Serial depth against hand-computed cases (rules in diffinterp/depth.py and serial-depth.md)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffinterp.depth import DepthTracer, serial_depth


def log2c(n: int) -> int:
    return math.ceil(math.log2(n)) if n > 1 else 0


def test_relu_mlp_1_8_8_1_has_depth_11():
    mlp = nn.Sequential(
        nn.Linear(1, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 1, bias=False)
    )
    report = serial_depth(mlp, torch.randn(4, 1))
    assert report.depth == 11  # (1 + 1) + (1 + 3 + 1) + (1 + 3)
    assert report.by_module == {"0": 1, "1": 1, "2": 4, "3": 1, "4": 4}
    assert [step.op for step in report.critical_path] == ["mm", "relu", "mm", "relu", "mm"]


@pytest.mark.parametrize("k", [1, 2, 3, 8, 1000])
def test_matmul_contraction_sizes(k):
    x, w = torch.randn(4, k), torch.randn(k, 3)
    assert serial_depth(torch.matmul, x, w).depth == 1 + log2c(k)
    # A bias is one more term of each output's sum.
    assert serial_depth(nn.functional.linear, x, w.T, torch.randn(3)).depth == 1 + log2c(k + 1)
    # Batched matmuls contract the same way.
    assert serial_depth(torch.matmul, torch.randn(2, 4, k), torch.randn(2, k, 5)).depth == 1 + log2c(k)


@pytest.mark.parametrize("n", [2, 5, 8, 1000])
def test_softmax_is_max_sub_exp_sum_div(n):
    assert serial_depth(torch.softmax, torch.randn(3, n), -1).depth == 2 * log2c(n) + 3


def test_reductions_and_elementwise():
    x = torch.randn(4, 6, 10)
    assert serial_depth(lambda t: t.sum(-1), x).depth == 4
    assert serial_depth(lambda t: t.mean((1, 2)), x).depth == 6  # 60 elements
    assert serial_depth(lambda t: t.amax(), x).depth == 8  # 240 elements
    assert serial_depth(lambda t: (t * 2 + 1).exp(), x).depth == 3
    assert serial_depth(lambda t: t.reshape(24, 10).transpose(0, 1)[3:].contiguous(), x).depth == 0
    assert serial_depth(lambda t: torch.cat([t, t * 2], 0), x).depth == 1


def test_rmsnorm_as_diffusiongemma_computes_it():
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaRMSNorm

    norm = DiffusionGemmaRMSNorm(64)
    # pow (1), mean over 64 (6), + eps (1), pow -0.5 (1), x * (1), * weight (1)
    assert serial_depth(norm, torch.randn(2, 3, 64)).depth == 11


def test_a_loop_adds_its_body_per_iteration():
    def loop(x, n):
        for _ in range(n):
            x = torch.tanh(x * 2)
        return x

    for n in (1, 5, 17):
        assert serial_depth(loop, torch.randn(3), n).depth == 2 * n


def attention_block(x, wq, wk, wv, wo):
    q, k, v = x @ wq, x @ wk, x @ wv
    scores = (q @ k.T) * (1.0 / math.sqrt(q.shape[-1]))
    return x + torch.softmax(scores, -1) @ v @ wo


def test_two_layer_attention_by_hand():
    s, d = 8, 16
    weights = [torch.randn(d, d) for _ in range(8)]

    def two_layers(x):
        return attention_block(attention_block(x, *weights[:4]), *weights[4:])

    # Layer 1 from depth 0: q,k,v 1+4 = 5; q@k^T 5+1+4 = 10; scale 11; softmax over 8: 11+2*3+3 = 20;
    # @v (contract 8): 20+1+3 = 24; @wo (contract 16): 24+5 = 29; + x: 30.
    # Layer 2 from 30: q,k,v 35; scores 40; scale 41; softmax 50; @v 54; @wo 59; + x: 60.
    report = serial_depth(two_layers, torch.randn(s, d))
    assert report.depth == 60
    assert sum(step.cost for step in report.critical_path) == 60


def test_token_choices_reset_depth():
    w1, embed, w2 = torch.randn(8, 16), torch.randn(16, 8), torch.randn(8, 4)

    def step(x):
        ids = (x @ w1).argmax(-1)  # depth resets: a discrete token
        return embed[ids] @ w2

    assert serial_depth(step, torch.randn(5, 8)).depth == 1 + 3

    def sampled(x):
        ids = torch.multinomial((x @ w1).softmax(-1), 1).squeeze(-1)
        return embed[ids] @ w2

    assert serial_depth(sampled, torch.randn(5, 8)).depth == 4

    def top2(x):
        values, ids = torch.topk(x @ w1, 2, dim=-1)
        return embed[ids].sum(1) @ w2, values

    report = serial_depth(top2, torch.randn(5, 8))
    assert report.output_depths == [1 + 1 + 3, 1 + 3 + 4]  # ids reset; values carry the selection (log2 16)


def test_marked_and_carried_depths():
    w = torch.randn(8, 8)
    with DepthTracer() as tracer:
        h = torch.randn(2, 8) @ w  # 4
        h = tracer.mark_interpretable(h * 3)
        out = h @ w  # 4 again
    assert tracer.report(out).depth == 4
    assert serial_depth(lambda a: a @ w, torch.randn(2, 8), input_depths={0: 10}).depth == 14
    with pytest.raises(ValueError, match="not a tensor argument"):
        serial_depth(lambda a: a, torch.randn(1), input_depths={3: 1})


def test_meta_tensors_need_no_memory():
    big = nn.Linear(50_000, 50_000, bias=False, device="meta")
    assert serial_depth(big, torch.randn(2, 50_000, device="meta")).depth == 1 + log2c(50_000)


def test_module_attribution_survives_decompositions_and_hooks_are_removed():
    from torch.nn.modules import module as module_globals

    block = nn.Sequential(nn.Linear(8, 8, bias=False), nn.GELU(approximate="tanh"), nn.Softmax(-1))
    before = (len(module_globals._global_forward_pre_hooks), len(module_globals._global_forward_hooks))
    report = serial_depth(block, torch.randn(2, 8))
    assert set(report.by_module) == {"0", "1", "2"}
    assert (len(module_globals._global_forward_pre_hooks), len(module_globals._global_forward_hooks)) == before


# ---------------------------------------------------------------------------------------------
# Whole models (tiny configs on the meta device)


@pytest.fixture(scope="module")
def tiny_meta_models():
    from diffinterp.depth.accounting import depth_models

    return depth_models("tiny")


def test_memoised_meta_kernels_give_the_same_reports_as_running_every_kernel(tiny_meta_models):
    """Two chained denoising steps on the meta device, traced with and without the memo of meta
    kernel outputs: the same depths, critical path, per-module split and op and unknown-op counts."""
    from transformers import DynamicCache

    diffusion, _ = tiny_meta_models
    canvas = diffusion.config.canvas_length

    def trace(memoise: bool):
        reports = []
        with torch.no_grad(), DepthTracer(root=diffusion, memoise=memoise) as tracer:
            cache = DynamicCache(config=diffusion.config.get_text_config(decoder=True))
            diffusion.model.encoder(input_ids=torch.zeros(1, 6, dtype=torch.long, device="meta"), past_key_values=cache)
            canvas_ids = torch.zeros(1, canvas, dtype=torch.long, device="meta")
            positions = torch.arange(6, 6 + canvas, device="meta").unsqueeze(0)
            signal = None
            for _ in range(2):
                logits = diffusion(
                    decoder_input_ids=canvas_ids,
                    self_conditioning_logits=signal,
                    past_key_values=cache,
                    decoder_position_ids=positions,
                ).logits
                reports.append(tracer.report(logits))
                signal = logits.softmax(-1).log()
        return reports, len(tracer._meta_outputs)

    memoised, entries = trace(True)
    plain, none = trace(False)
    assert entries > 0 and none == 0
    assert memoised == plain
    assert memoised[1].depth > memoised[0].depth and sum(memoised[1].op_counts.values()) > 100


def test_bottlenecks_cut_the_chain_and_continuous_signal_does_not(tiny_meta_models):
    from diffinterp.depth.accounting import diffusion_step_depths

    diffusion, _ = tiny_meta_models
    continuous = diffusion_step_depths(diffusion, 4, "continuous").step_depths
    argmax = diffusion_step_depths(diffusion, 4, "argmax").step_depths
    sample = diffusion_step_depths(diffusion, 4, "sample").step_depths
    none = diffusion_step_depths(diffusion, 4, "none").step_depths
    assert none == [none[0]] * 4
    assert argmax == sample and argmax[1:] == [argmax[1]] * 3
    assert argmax[1] > argmax[0]  # the token signal still runs through the soft embedding and the MLP
    increments = [b - a for a, b in zip(continuous, continuous[1:], strict=False)]
    assert len(set(increments)) == 1 and increments[0] > argmax[1] - argmax[0]


def test_extrapolated_chains_equal_fully_traced_chains(tiny_meta_models):
    from diffinterp.depth.accounting import chain_depth, diffusion_step_depths

    diffusion, _ = tiny_meta_models
    for mode in ("continuous", "topk:3", "argmax"):
        full = diffusion_step_depths(diffusion, 10, mode).step_depths
        short = full[:4]
        assert [chain_depth(short, n) for n in range(1, 11)] == [max(full[:n]) for n in range(1, 11)], mode
    with pytest.raises(ValueError, match="not settled"):
        chain_depth([1, 5, 7], 10)


def test_ar_token_depth_reads_the_kv_cache(tiny_meta_models):
    from diffinterp.depth.accounting import ar_token_depth

    _, ar = tiny_meta_models
    report = ar_token_depth(ar, prompt_len=16)
    assert report.depth > 0
    assert any("self_attn" in name for name in report.by_module)
    longer = ar_token_depth(ar, prompt_len=100)
    assert longer.depth > report.depth  # attention sums over more cached keys: a deeper reduction


def test_depth_cli_prints_the_table(warm_python):
    result = warm_python.run(["-m", "diffinterp.cli", "depth", "--config", "tiny", "--chain-lengths", "48", "20"])
    assert result.returncode == 0, result.stderr
    assert "| DiffusionGemma | continuous | 48 |" in result.stdout and "28.6×" in result.stdout


def test_a_top_k_chain_resets_under_the_interpretable_convention_by_hand():
    """Hand count, V = 4 tokens, d = 2: a step reads its canvas embedding (depth 0) plus the soft
    embedding of the previous signal, softmax(s) @ E, then projects: logits = (emb + softmax(s) @ E) @ W.
    With a depth-0 signal: softmax over 4 = 2*2 + 3 = 7, @E (K = 4) = 1 + 2 -> 10, + emb -> 11,
    @W (K = 2) = 1 + 1 -> 13. The first step has no signal: emb @ W = 2."""
    from diffinterp.core.bottleneck import top_k_logits

    g = torch.Generator().manual_seed(0)
    emb, E, W = torch.randn(1, 2, generator=g), torch.randn(4, 2, generator=g), torch.randn(2, 4, generator=g)

    def chain(interpretable: bool) -> list[int]:
        depths = []
        with DepthTracer() as tracer:
            signal = None
            for _ in range(4):
                h = emb if signal is None else emb + signal.softmax(-1) @ E
                logits = h @ W
                depths.append(tracer.depth_of(logits))
                signal = top_k_logits(logits, 2)
                if interpretable:
                    signal = tracer.mark_interpretable(signal, "top-2 tokens")
        return depths

    assert chain(interpretable=True) == [2, 13, 13, 13]
    opaque = chain(interpretable=False)
    assert opaque[0] == 2 and opaque[1] > 13  # the signal brings the top-k transform's own depth along
    assert opaque[3] - opaque[2] == opaque[2] - opaque[1] > 0  # the chain runs on, by a fixed step


def test_the_paper_bottleneck_is_counted_both_ways_on_a_model(tiny_meta_models):
    from diffinterp.depth.accounting import diffusion_step_depths

    diffusion, _ = tiny_meta_models
    for mode in ("topk:8", "topp:0.03"):
        interpretable = diffusion_step_depths(diffusion, 4, mode, interpretable_tokens=True).step_depths
        opaque = diffusion_step_depths(diffusion, 4, mode, interpretable_tokens=False).step_depths
        argmax = diffusion_step_depths(diffusion, 4, "argmax").step_depths
        assert interpretable[1:] == [interpretable[1]] * 3  # reset every step, like a token
        assert interpretable[1] >= argmax[1]  # the kept probabilities feed the soft embedding
        assert opaque[3] > opaque[2] > opaque[1]  # no reset: the chain grows
