"""spec.prompt (issue 15, first part): the prompt settings' rules agree in CEL and Python,
reach the CRD, the plan and lm-eval's arguments, and enter the result cache key."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from pydantic import ValidationError

from qeval.api import EvalRun, QuantizedModel, load_documents
from qeval.api.evalrun import PROMPT_RULES, Prompt
from qeval.plan import Layout, build_plan
from qeval.results.cache import evaluation_fields, key_of
from tests.conftest import EXAMPLES
from tests.test_api import cel

CASES = [
    {},
    {"chatTemplate": True},
    {"chatTemplate": True, "fewshotAsMultiturn": True},
    {"fewshotAsMultiturn": True},
    {"chatTemplate": False, "fewshotAsMultiturn": True},
    {"chatTemplate": True, "chatTemplateName": "tool_use"},
    {"chatTemplateName": "tool_use"},
    {"chatTemplate": True, "enableThinking": True, "thinkEndToken": "</think>"},
    {"chatTemplate": True, "enableThinking": True},
    {"enableThinking": True, "thinkEndToken": "</think>"},
    {"chatTemplate": True, "enableThinking": False},
    {"systemInstruction": "Answer briefly.", "genKwargs": {"temperature": 0, "until": ["\n"]}},
]


@pytest.mark.parametrize("wire", CASES)
def test_prompt_rules_in_cel_and_python_agree(wire):
    names = {f.alias or n: n for n, f in Prompt.model_fields.items()}
    obj = Prompt.model_construct(**{names[k]: v for k, v in wire.items()})
    for rule in PROMPT_RULES:
        assert cel(rule.cel, wire) == bool(rule.check(obj)), (rule.cel, wire)
    valid = all(rule.check(obj) for rule in PROMPT_RULES)
    if valid:
        Prompt.model_validate(wire)
    else:
        with pytest.raises(ValidationError, match="spec.prompt"):
            Prompt.model_validate(wire)


def test_prompt_rules_reach_the_crd():
    from qeval.api.crd import CRDS, build_crd

    (info,) = [c for c in CRDS if c.model is EvalRun]
    schema = build_crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    prompt = schema["properties"]["spec"]["properties"]["prompt"]
    rules = [r["rule"] for r in prompt["x-kubernetes-validations"]]
    assert "self == oldSelf" in rules and all(r.cel in rules for r in PROMPT_RULES)
    assert "description" in prompt["properties"]["fewshotAsMultiturn"]


def test_the_prompt_reaches_lm_eval_and_the_model_args():
    p = Prompt.model_validate(
        {
            "chatTemplate": True,
            "fewshotAsMultiturn": True,
            "systemInstruction": "Be brief.",
            "genKwargs": {"temperature": 0, "maxGenToks": 256},
            "enableThinking": True,
            "thinkEndToken": "</think>",
        }
    )
    assert p.evaluate_args() == {
        "apply_chat_template": True,
        "fewshot_as_multiturn": True,
        "system_instruction": "Be brief.",
        "gen_kwargs": {"temperature": 0, "max_gen_toks": 256},
    }
    assert p.model_args() == {"enable_thinking": True, "think_end_token": "</think>"}
    named = Prompt.model_validate({"chatTemplate": True, "chatTemplateName": "tool_use"})
    assert named.evaluate_args()["apply_chat_template"] == "tool_use"


def test_the_plan_passes_the_prompt_to_every_evaluation_only_when_set():
    objs = load_documents(EXAMPLES / "evalrun.yaml")
    run = next(o for o in objs if isinstance(o, EvalRun))
    models = {o.name: o for o in objs if isinstance(o, QuantizedModel)}
    layout = Layout(PurePosixPath("/w/runs/demo"), PurePosixPath("/w/models"))
    plain = build_plan(run, models, layout)
    assert all("prompt" not in s.input for s in plain if s.kind == "evaluate")
    chat = Prompt(chat_template=True, fewshot_as_multiturn=True)
    spec = run.spec.model_copy(update={"prompt": chat})
    stages = build_plan(run.model_copy(update={"spec": spec}), models, layout)
    evaluations = [s for s in stages if s.kind == "evaluate"]
    assert len(evaluations) == 5
    assert all(s.input["prompt"] == chat.dump() for s in evaluations)


def test_the_prompt_enters_the_cache_key_and_the_default_leaves_it_as_it_was():
    base = dict(
        model="m",
        task="t",
        num_fewshot=None,
        limit=None,
        task_config="c",
        harness_version="0.4.13",
        backend="hf",
        backend_config={},
        seed=1234,
    )
    plain = key_of(evaluation_fields(**base))
    assert key_of(evaluation_fields(**base, prompt=None)) == plain
    chat = key_of(evaluation_fields(**base, prompt=Prompt(chat_template=True).dump()))
    multi = Prompt(chat_template=True, fewshot_as_multiturn=True).dump()
    assert len({plain, chat, key_of(evaluation_fields(**base, prompt=multi))}) == 3


def test_what_the_chat_path_cannot_score_is_refused_before_any_work():
    from qeval.stages.taskindex import TaskInfo, prompt_problems

    index = {
        "mc": TaskInfo("task", output_type="multiple_choice"),
        "gen": TaskInfo("task", output_type="generate_until"),
        "ppl": TaskInfo("task", output_type="loglikelihood_rolling"),
        "grp": TaskInfo("group", ("mc", "gen")),
    }
    assert list(prompt_problems(index, "gen", chat_server=True, thinking=True)) == []
    assert list(prompt_problems(index, "mc", chat_server=False, thinking=False)) == []
    (chat,) = prompt_problems(index, "grp", chat_server=True, thinking=False)
    assert chat.startswith("mc score log-likelihoods") and "backend hf or vllm" in chat
    (think,) = prompt_problems(index, "ppl", chat_server=False, thinking=True)
    assert "enableThinking: false" in think


def test_a_server_with_the_chat_template_is_asked_through_chat_completions(tmp_path):
    from qeval.stages import evaluate

    def inp(prompt):
        return evaluate.EvaluateInput(
            model_name="w4a16",
            model={"uri": str(tmp_path)},
            tasks=[{"name": "gen"}],
            backend="vllm-server",
            base_url="http://127.0.0.1:8000",
            prompt=prompt,
            output_dir=str(tmp_path / "out"),
        )

    chat = inp(Prompt(chat_template=True, think_end_token="</think>"))
    assert evaluate.chat_server(chat)
    args = evaluate._model_args(chat, tmp_path)
    assert args["base_url"] == "http://127.0.0.1:8000/v1/chat/completions"
    assert args["model"] == "w4a16" and args["think_end_token"] == "</think>"
    assert "tokenizer" not in args  # the server's template and tokenizer
    assert not evaluate.chat_server(inp(None))
    assert not evaluate.chat_server(inp(Prompt(system_instruction="Be brief.")))


@pytest.mark.pipeline
def test_the_chat_template_reaches_lm_eval_on_the_demo_model(tmp_path):
    """Real lm-eval on the demo model (its tokenizer has a chat template): with
    spec.prompt.chatTemplate the per-sample logs hold the templated prompts, without it the
    plain ones, and the two results are cached under different keys."""
    import json

    from qeval.demo.model import demo_model_path
    from qeval.stages import evaluate

    model = demo_model_path()

    def run(name, prompt):
        inp = evaluate.EvaluateInput(
            model_name=name,
            model={"uri": str(model)},
            tasks=[{"name": "qeval_demo_recall", "limit": 8}],
            batch_size=8,
            prompt=prompt,
            cache_dir=str(tmp_path / "cache"),
            output_dir=str(tmp_path / name),
        )
        result = evaluate.run(inp)
        first = (Path(result.samples_dir) / "qeval_demo_recall.jsonl").open().readline()
        return result, json.dumps(json.loads(first)["arguments"])

    plain, plain_prompt = run("plain", None)
    chat, chat_prompt = run("chat", Prompt(chat_template=True, system_instruction="Answer."))
    assert "[user]" not in plain_prompt and "[system] Answer." not in plain_prompt
    assert "[system] Answer.\\n[user] " in chat_prompt and "[assistant] " in chat_prompt
    assert plain.cache_keys["qeval_demo_recall"] != chat.cache_keys["qeval_demo_recall"]
    assert plain.scores and chat.scores


def test_the_prompt_enters_the_operators_reuse_key():
    from qeval.k8s.reuse import reuse_keys

    objs = load_documents(EXAMPLES / "evalrun.yaml")
    run = next(o for o in objs if isinstance(o, EvalRun))
    models = {o.name: o for o in objs if isinstance(o, QuantizedModel)}
    layout = Layout(PurePosixPath("/w/runs/demo"), PurePosixPath("/w/models"))
    plain = reuse_keys(build_plan(run, models, layout), "image")
    spec = run.spec.model_copy(update={"prompt": Prompt(chat_template=True)})
    chat = reuse_keys(build_plan(run.model_copy(update={"spec": spec}), models, layout), "image")
    assert plain.keys() == chat.keys() and len(plain) == 5
    assert all(plain[name] != chat[name] for name in plain)


@pytest.mark.pipeline
def test_the_chat_template_through_a_server_is_the_servers(tmp_path):
    """Backend vllm-server with the chat template: lm-eval's local-chat-completions sends
    messages to /v1/chat/completions and the server applies the model's chat template (here
    qeval's hf server, the stand-in for vLLM on a CPU); the same task through the completions
    path gives the plain prompt. Real lm-eval, a real server process."""
    import json

    from qeval.demo.model import demo_model_path
    from qeval.serving.launch import served
    from qeval.stages import evaluate

    model = demo_model_path()
    with served("hf", str(model), "demo", tmp_path / "server.log") as server:

        def run(name, prompt):
            inp = evaluate.EvaluateInput(
                model_name="demo",
                model={"uri": str(model)},
                tasks=[{"name": "qeval_demo_recall", "limit": 4}],
                backend="vllm-server",
                base_url=server.base_url,
                batch_size=1,
                prompt=prompt,
                output_dir=str(tmp_path / name),
            )
            result = evaluate.run(inp)
            first = (Path(result.samples_dir) / "qeval_demo_recall.jsonl").open().readline()
            return result, json.loads(first)

        chat, sample = run("chat", Prompt(chat_template=True, system_instruction="Answer."))
        plain, plain_sample = run("plain", None)
    ((request, _),) = sample["arguments"]  # the chat messages lm-eval sent, as JSON
    messages = json.loads(request[0])
    assert [m["role"] for m in messages] == ["system", "user"]  # the server templates them
    assert messages[0]["content"] == "Answer." and messages[1]["content"].endswith(" lives in")
    assert "role" not in json.dumps(plain_sample["arguments"])  # plain text
    assert len(chat.scores) == len(plain.scores) == 1


def test_the_stand_in_server_templates_chat_messages_as_vllm_does():
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from qeval.demo.model import demo_model_path
    from qeval.serving.hf_server import BadRequest, chat_body

    tokenizer = AutoTokenizer.from_pretrained(str(demo_model_path()))
    model = SimpleNamespace(tokenizer=tokenizer)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}]
    body = chat_body(model, {"model": "demo", "messages": messages, "max_tokens": 5, "seed": 1})
    assert body == {
        "model": "demo",
        "seed": 1,
        "prompt": "[system] Be brief.\n[user] x\n[assistant] ",
        "max_tokens": 5,
    }
    with pytest.raises(BadRequest, match="messages"):
        chat_body(model, {"messages": "x"})
    tokenizer.chat_template = None
    with pytest.raises(BadRequest, match="no chat template"):
        chat_body(model, {"messages": messages})


def test_the_preflight_refuses_what_the_chat_path_cannot_score():
    from qeval.local.preflight import task_problems
    from tests.test_api import er

    def problems(backend, prompt, tasks):
        run = EvalRun.model_validate(
            er(backend=backend, prompt=prompt, tasks=[{"name": t} for t in tasks])
        )
        return list(task_problems(run))

    chat = {"chatTemplate": True}
    facts, recall = "qeval_demo_facts", "qeval_demo_recall"  # multiple choice, generative
    (problem,) = problems("vllm-server", chat, [facts, recall])
    assert problem.startswith("EvalRun r: spec.tasks[0].name: qeval_demo_facts score log-lik")
    assert problems("vllm-server", chat, [recall]) == []
    assert problems("hf", chat, [facts, recall]) == []  # lm-eval applies the template itself
    thinking = {"chatTemplate": True, "enableThinking": True, "thinkEndToken": "</think>"}
    (problem,) = problems("hf", thinking, [facts])
    assert "enableThinking: false" in problem
