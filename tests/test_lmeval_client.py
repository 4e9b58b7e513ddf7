"""What qeval sends lm-eval and vLLM: the same tokens from both backends, the server's
whole context, and spec.modelArgs with their types.

Backend hf runs lm-eval's HFLM on the model in process; backend vllm-server runs lm-eval's
local-completions against the model's server (tests/doubles/vllm here: vLLM needs a GPU,
the double serves the model through transformers and answers as vLLM does). The model is a
tiny Llama with random weights, seed 0 (what is tested is which tokens reach it, not what it
learnt), the demo model's tokenizer set to add a BOS token, and 8,192 positions.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest

from qeval.api.common import ModelSource
from qeval.api.evalrun import MAX_MODEL_LEN_RULE, Backend, EvalRun, Serving, Task
from qeval.serving.launch import Server, served, vllm_arguments
from qeval.stages import evaluate
from qeval.stages.envelope import StageError
from qeval.stages.evaluate import EvaluateInput, lm_eval_model, reported_max_model_len
from tests.conftest import ROOT

POSITIONS = 8192
SERVED = "bos"


def tiny_llama(out: Path, add_bos: bool) -> Path:
    """A 2-layer Llama with the demo tokenizer, which adds a BOS token if ``add_bos``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from qeval.demo.model import build_tokenizer

    tok = build_tokenizer()
    if add_bos:  # as Llama 3's tokenizer.json does it: a post-processor that prepends it
        from tokenizers.processors import TemplateProcessing

        bos = (tok.bos_token, tok.bos_token_id)
        tok.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B:1", special_tokens=[bos]
        )
    tok.save_pretrained(out)
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config |= {"add_bos_token": add_bos, "model_max_length": POSITIONS}
    path.write_text(json.dumps(config))
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=POSITIONS,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    model.save_pretrained(out)
    reloaded = AutoTokenizer.from_pretrained(out)
    assert (reloaded("1 a")["input_ids"][0] == tok.bos_token_id) == add_bos  # the premise
    return out


@pytest.fixture(scope="module")
def bos_model(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("bos-model"), add_bos=True)


@pytest.fixture(scope="module")
def server(bos_model, tmp_path_factory) -> Iterator[Server]:
    """The double serving the model as vLLM would with --max-model-len auto."""
    path = os.pathsep.join(
        [str(ROOT / "tests" / "doubles"), str(Path(sys.executable).parent), os.environ["PATH"]]
    )
    log = tmp_path_factory.mktemp("server") / "server.log"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", path)
        with served(
            Backend.VLLM_SERVER, str(bos_model), SERVED, log, 120, Serving(max_model_len="auto")
        ) as s:
            yield s


def stage_input(
    model: Path,
    backend: Backend,
    out: Path,
    server: Server | None = None,
    model_args: dict[str, str] | None = None,
    serving: Serving | None = None,
) -> EvaluateInput:
    return EvaluateInput(
        model_name=SERVED,
        model=ModelSource(uri=str(model)),
        tasks=[Task(name="qeval_demo_facts", limit=24)],
        backend=backend,
        batch_size=8,
        model_args=model_args or {},
        base_url=server.base_url if server else None,
        serving=(serving or Serving(max_model_len="auto")) if server else None,
        output_dir=str(out),
    )


def loglikelihoods(out: Path) -> list[float]:
    """Every (document, choice) loglikelihood of the stage's samples, in document order."""
    rows = [json.loads(line) for line in (out / "samples" / "qeval_demo_facts.jsonl").open()]
    rows.sort(key=lambda r: r["doc_id"])
    return [float(resp[0][0]) for r in rows for resp in r["resps"]]


# --- 7: BOS -------------------------------------------------------------------------------


@pytest.mark.pipeline
def test_server_scores_equal_hf_on_a_tokenizer_that_adds_bos(bos_model, server, tmp_path):
    hf_out, srv_out, off_out = tmp_path / "hf", tmp_path / "server", tmp_path / "no-bos"
    hf = evaluate.run(stage_input(bos_model, Backend.HF, hf_out))
    srv = evaluate.run(stage_input(bos_model, Backend.VLLM_SERVER, srv_out, server))
    # lm-eval's own default for local-completions: no special tokens (what qeval sent before)
    off = stage_input(bos_model, Backend.VLLM_SERVER, off_out, server, {"add_bos_token": "false"})
    evaluate.run(off)

    a, b, c = loglikelihoods(hf_out), loglikelihoods(srv_out), loglikelihoods(off_out)
    assert len(a) == len(b) == len(c) >= 48
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5  # measured: 0.0
    assert [s.value for s in srv.scores] == [s.value for s in hf.scores]
    # Without the BOS the server scores other token sequences: every loglikelihood moves
    # (measured: by 0.00035 to 0.12, median 0.037).
    assert min(abs(x - y) for x, y in zip(a, c, strict=True)) > 1e-4


def rolling(out: Path) -> list[tuple[float, int]]:
    """Each document's (loglikelihood, words) of the perplexity task, in document order."""
    path = out / "samples" / "qeval_demo_perplexity.jsonl"
    rows = sorted((json.loads(line) for line in path.open()), key=lambda r: r["doc_id"])
    return [tuple(r["word_perplexity"]) for r in rows]


@pytest.mark.pipeline
def test_perplexity_through_the_server_equals_hf(bos_model, server, tmp_path):
    """loglikelihood_rolling through local-completions (echoed prompt logprobs): every
    document's loglikelihood, and so the perplexity, as backend hf computes them."""
    task = [Task(name="qeval_demo_perplexity", limit=16)]
    hf_in = stage_input(bos_model, Backend.HF, tmp_path / "hf").model_copy(update={"tasks": task})
    srv_in = stage_input(bos_model, Backend.VLLM_SERVER, tmp_path / "srv", server)
    hf, srv = evaluate.run(hf_in), evaluate.run(srv_in.model_copy(update={"tasks": task}))
    a, b = rolling(tmp_path / "hf"), rolling(tmp_path / "srv")
    assert len(a) == len(b) == 16 and [w for _, w in a] == [w for _, w in b]
    assert max(abs(x - y) for (x, _), (y, _) in zip(a, b, strict=True)) < 1e-3
    for metric in ("bits_per_byte", "word_perplexity", "byte_perplexity"):
        (h,) = [s for s in hf.scores if s.metric == metric]
        (v,) = [s for s in srv.scores if s.metric == metric]
        assert not h.higher_is_better and not v.higher_is_better
        assert h.primary == v.primary == (metric == "bits_per_byte")  # the task's first
        assert v.value == pytest.approx(h.value, rel=1e-4)


# --- 8: the server's context reaches lm-eval as max_length --------------------------------


def long_context(model: Path) -> str:
    """A context of more than 2,048 tokens (and fewer than 8,192)."""
    from transformers import AutoTokenizer

    text = " ".join(f"{i}+{i + 1}={2 * i + 1}." for i in range(300))
    n = len(AutoTokenizer.from_pretrained(model)(text)["input_ids"])
    assert 2048 < n < POSITIONS - 16, n
    return text


def score(lm: Any, context: str) -> float:
    from lm_eval.api.instance import Instance

    request = Instance("loglikelihood", doc={}, arguments=(context, " 601"), idx=0)
    ((ll, _greedy),) = lm.loglikelihood([request])
    return float(ll)


@pytest.mark.pipeline
def test_a_context_beyond_2048_tokens_reaches_the_server_whole(bos_model, server, tmp_path):
    context = long_context(bos_model)
    hf = lm_eval_model(stage_input(bos_model, Backend.HF, tmp_path), bos_model)
    auto = lm_eval_model(stage_input(bos_model, Backend.VLLM_SERVER, tmp_path, server), bos_model)
    # auto: the stage asked the server (GET /v1/models); lm-eval keeps one token for output
    assert (hf.max_length, auto.max_length) == (POSITIONS, POSITIONS - 1)
    assert abs(score(auto, context) - score(hf, context)) < 1e-4

    # lm-eval's default, 2,048: the context is cut from the left and scores otherwise
    cut = stage_input(bos_model, Backend.VLLM_SERVER, tmp_path, server, {"max_length": "2048"})
    short = lm_eval_model(cut, bos_model)
    assert short.max_length == 2047
    assert abs(score(short, context) - score(hf, context)) > 1e-4


@pytest.mark.pipeline
def test_the_double_takes_and_reports_a_numeric_max_model_len(bos_model, tmp_path, monkeypatch):
    path = [str(ROOT / "tests" / "doubles"), str(Path(sys.executable).parent), os.environ["PATH"]]
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    serving = Serving(max_model_len=512)
    with served(Backend.VLLM_SERVER, str(bos_model), SERVED, tmp_path / "log", 120, serving) as s:
        # the default (the model's own) is not known in advance either: the stage asks
        assert evaluate.server_max_length(s.base_url, SERVED, Serving()) == 512
        import httpx

        answer = httpx.post(
            f"{s.base_url}/v1/completions",
            json={"model": SERVED, "prompt": [1] * 600, "max_tokens": 1},
            timeout=30,
        )
        assert answer.status_code == 400 and "512 tokens" in answer.text


def test_a_numeric_max_model_len_is_used_as_it_is_without_asking(bos_model):
    # Nothing listens on port 9: asking the server would fail the stage.
    inp = stage_input(bos_model, Backend.VLLM_SERVER, bos_model)
    inp = inp.model_copy(
        update={"base_url": "http://127.0.0.1:9", "serving": Serving(max_model_len=4096)}
    )
    args = evaluate._model_args(inp, bos_model)
    assert args["max_length"] == 4096
    assert args["add_bos_token"] is True and args["tokenizer_backend"] == "huggingface"
    auto = inp.model_copy(update={"serving": Serving(max_model_len="auto")})
    with pytest.raises(StageError) as e:
        evaluate._model_args(auto, bos_model)
    assert e.value.reason == "ServerFailed" and "127.0.0.1:9/v1/models" in str(e.value)


def test_a_tokenizer_without_bos_gets_none(tmp_path):
    plain = tiny_llama(tmp_path, add_bos=False)
    assert evaluate.adds_special_tokens(plain) is False
    inp = stage_input(plain, Backend.VLLM_SERVER, tmp_path)
    inp = inp.model_copy(update={"base_url": "http://x", "serving": Serving(max_model_len=512)})
    assert evaluate._model_args(inp, plain)["add_bos_token"] is False


def test_the_max_model_len_vllm_reports():
    # GET /v1/models as vLLM answers it (ModelCard: id, max_model_len, root, ...)
    answer = {
        "object": "list",
        "data": [
            {"id": "other", "object": "model", "max_model_len": 4096},
            {"id": "bos", "object": "model", "root": "/models/m", "max_model_len": 131072},
        ],
    }
    assert reported_max_model_len(answer, "bos") == 131072
    with pytest.raises(StageError) as e:
        reported_max_model_len({"data": [{"id": "bos", "object": "model"}]}, "bos")
    assert e.value.reason == "UnknownContextLength" and "spec.serving.maxModelLen" in str(e.value)
    with pytest.raises(StageError) as e:
        reported_max_model_len(answer, "w4a16")
    assert e.value.reason == "NoServer" and "'other', 'bos'" in str(e.value)
    with pytest.raises(StageError):
        reported_max_model_len({"data": [{"id": "bos", "max_model_len": True}]}, "bos")


def test_the_cache_key_of_a_server_evaluation_names_how_the_client_encodes(bos_model):
    inp = stage_input(bos_model, Backend.VLLM_SERVER, bos_model).model_copy(
        update={"base_url": "http://x", "serving": Serving(max_model_len="auto")}
    )
    config = evaluate.backend_config(inp)
    assert config["client"] == {
        "tokenizerBackend": "huggingface",
        "specialTokens": "tokenizer",
        "maxLength": "server",
    }
    assert config["serving"]["maxModelLen"] == "auto"


# --- 9: spec.modelArgs reach the model object typed ---------------------------------------


@pytest.mark.pipeline
@pytest.mark.parametrize("backend", [Backend.HF, Backend.VLLM_SERVER])
def test_model_args_reach_the_lm_eval_model_typed(backend, bos_model, server, tmp_path):
    args = {"max_length": "8192", "add_bos_token": "false"}
    inp = stage_input(bos_model, backend, tmp_path, server if backend != "hf" else None, args)
    lm = lm_eval_model(inp, bos_model)
    assert lm.add_bos_token is False  # the string "false" would be truthy
    # local-completions keeps one token of max_length for the output
    assert lm.max_length == (8192 if backend == "hf" else 8191)
    assert type(lm.max_length) is int


# --- 14: maxModelLen: a number or auto -------------------------------------------------------

CEL = celpy.Environment()

MAX_MODEL_LENS = [
    (16, True),
    (8192, True),
    (10485760, True),
    ("auto", True),
    (15, False),
    (0, False),
    (-1, False),  # vLLM's own spelling of auto: qeval asks for the word
    (10485761, False),
    ("8k", False),
    ("8192", False),
    ("Auto", False),
    ("", False),
]


@pytest.mark.parametrize(("value", "ok"), MAX_MODEL_LENS)
def test_max_model_len_rule_in_cel_and_python_agree(value, ok):
    program = CEL.program(CEL.compile(MAX_MODEL_LEN_RULE.cel))
    assert bool(program.evaluate({"self": celpy.json_to_cel(value)})) == ok
    assert MAX_MODEL_LEN_RULE.check(value) == ok
    if ok:
        assert Serving.model_validate({"maxModelLen": value}, strict=True).max_model_len == value
    else:
        with pytest.raises(ValueError, match="maxModelLen is a number of tokens"):
            Serving.model_validate({"maxModelLen": value}, strict=True)


def test_max_model_len_rule_reaches_the_crd():
    from qeval.api.crd import CRDS, build_crd

    (info,) = [c for c in CRDS if c.model is EvalRun]
    schema = build_crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    field = schema["properties"]["spec"]["properties"]["serving"]["properties"]["maxModelLen"]
    assert field["x-kubernetes-int-or-string"] is True
    assert MAX_MODEL_LEN_RULE.cel in [r["rule"] for r in field["x-kubernetes-validations"]]


def test_auto_reaches_vllm_serve():
    argv = vllm_arguments("/m", "bos", "0.0.0.0", 8000, Serving(max_model_len="auto"))
    assert argv[argv.index("--max-model-len") + 1] == "auto"
    argv = vllm_arguments("/m", "bos", "0.0.0.0", 8000, Serving(max_model_len=8192))
    assert argv[argv.index("--max-model-len") + 1] == "8192"
    assert "--max-model-len" not in vllm_arguments("/m", "bos", "0.0.0.0", 8000, Serving())
