"""Label probabilities through the real vLLM server (issue 32): the OpenAI API's `logprob_token_ids` extension
gives the same numbers as the offline engine on the same requests, and a server without the extension (one that
refuses it, one that ignores it: the fault proxy answers as either would) gives rows that say so, one warning,
and a finished run. On Gemma 3 (the default model): SmolLM2's tokenizer cannot tell the labels apart by their
first tokens, so test_serve's server reads none."""
import json

import pytest

from patent_risk.evaluate.batch import BatchConfig, run_batch
from patent_risk.evaluate.calibration import run_calibration
from patent_risk.runtime import cpu_env
from patent_risk.runtime.engines import AdapterSpec, VllmServer
from patent_risk.runtime.requests import build_requests
from patent_risk.serve.server import ServerConfig, free_port, start, stop

# Slow tier: a Gemma server of its own costs about 2 minutes to start here and the calls 3 more (2026-12-07, Intel
# Xeon family 6 model 207, 2 cores), with the default suite already past its 25 minutes; the parsing of the
# server's answer is in the default tier (test_label_probs.test_openai_steps_...).
pytestmark = [pytest.mark.engine, pytest.mark.slow]
START_TIMEOUT = 1200  # a deadline, not a duration


@pytest.fixture(scope="module")
def gemma_server(embedded_model, trained_adapter, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PATENT_RISK_HOME", str(tmp_path_factory.mktemp("home")))
    cfg = ServerConfig(model=str(embedded_model), adapters=[("tiny", str(trained_adapter))], port=free_port(),
                       max_model_len=1024, name="pytest-probs", memory_utilization=0.1,
                       kv_cache_bytes=cpu_env.kv_cache_bytes(str(embedded_model), cpu_env.default_dtype(), 1024, 4))
    try:
        yield start(cfg, timeout=START_TIMEOUT, log=lambda s: None)
    finally:
        stop("pytest-probs", log=lambda s: None)
        mp.undo()


def _decisions(lp):
    return [lp["risk_level"]] + lp["matches"] if "risk_level" in lp else []


@pytest.mark.parametrize("constrained", [True, False], ids=["constrained", "unconstrained"])
def test_the_server_gives_the_offline_engines_probabilities(gemma_server, engine, embedded_model, eval_records,
                                                             constrained):
    """The same requests one at a time through the offline engine and the server (concurrency 1): the same
    answers, and every label's probability and the label mass within 1e-4."""
    server = VllmServer(gemma_server.url, "tiny", str(embedded_model), max_concurrency=1)
    records = eval_records[:2] if constrained else eval_records[:1]  # an unconstrained answer runs long
    reqs = build_requests(records, "v1", constrained, engine.count_tokens, label_probs=True)
    offline = [engine.generate([r])[0] for r in reqs]
    online = server.generate(reqs)
    server.close()
    assert [r.raw_output for r in online] == [r.raw_output for r in offline]
    compared = 0
    for a, b in zip(offline, online):
        assert a.label_probs.keys() == b.label_probs.keys()
        for x, y in zip(_decisions(a.label_probs), _decisions(b.label_probs)):
            assert x.keys() == y.keys() and x["label"] == y["label"]
            if "probs" in x:
                assert x["probs"] == pytest.approx(y["probs"], abs=1e-4) and x["mass"] == pytest.approx(y["mass"], abs=1e-4)
                compared += 1
    assert compared > 0 or not constrained
    if constrained:
        assert compared == sum(1 + len(r.element_ids) for r in records)  # every decision read, both ways


@pytest.mark.parametrize("action", ["forward", "refuse-extension", "ignore-extension"])
def test_a_server_without_the_extension_gives_rows_that_say_so_and_one_warning(gemma_server, embedded_model,
                                                                              trained_adapter, short_eval, tmp_path, action):
    from .faultproxy import FaultProxy

    proxy = FaultProxy(gemma_server.url, lambda n: action)
    lines: list[str] = []
    out = tmp_path / "run"
    cfg = BatchConfig(data=str(short_eval), out=str(out), constrained=True, model=str(embedded_model),
                      adapter=AdapterSpec("tiny", str(trained_adapter)), server=proxy.url, limit=3, chunk_size=3)
    try:
        eng = VllmServer(proxy.url, "tiny", str(embedded_model), max_concurrency=1, log=lines.append)
        summary = run_batch(cfg, lambda m: eng, log=lines.append, progress=False)
    finally:
        proxy.close()
    assert summary.generated == 3
    assert json.loads((out / "run.json").read_text())["label_probs"] is True  # the setting; the rows say what came
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    warnings = [x for x in lines if x.startswith("warning:")]
    cal = run_calibration(rows)
    if action == "forward":
        assert not warnings and all("probs" in d for r in rows for d in _decisions(r["label_probs"]))
        assert cal["rows_with_probabilities"] == 3 and cal["rows_without_probabilities"] == 0
        # issue 33: `serve start` serves vLLM's prefix-cache reset on loopback and reports cached prompt tokens
        (c,) = json.loads((out / "run.json").read_text())["conditions"]
        assert c["prefix_cache"] == "reset" and c["mode"] == "server" and c["max_concurrency"] == 1, c
        assert all(isinstance(r["cached_tokens"], int) for r in rows) and c["cached_prompt_tokens"] is not None
        return
    why = "refused logprob_token_ids" if action == "refuse-extension" else "ignores vLLM's logprob_token_ids"
    assert len(warnings) == 1 and why in warnings[0] and "--no-label-probs" in warnings[0], lines
    assert all(why in r["label_probs"]["unavailable"] for r in rows), rows
    assert proxy.injected == {action: 1}  # asked once: later requests leave the extension out
    assert cal["rows_with_probabilities"] == 0 and cal["rows_without_probabilities"] == 3
