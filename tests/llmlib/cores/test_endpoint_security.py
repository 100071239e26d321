"""The `trtllm_endpoint` core's URLs, TLS and secrets, health-check verdicts and reasoning streams, against
the mock OpenAI server on 127.0.0.1 (plain and TLS with a certificate made here): https verified with a CA
file and refused without, path prefixes, no key over plain http to a remote host, a key echoed by a
server never in a cause or a log line, final vs retryable health causes, token-id refusals in one line,
and reasoning deltas as first token and output."""

from __future__ import annotations

import io
import logging
import ssl
import time
from types import SimpleNamespace

import numpy as np
import pytest
from llmlib.cores.base import Request
from llmlib.cores.trtllm_endpoint_core import EndpointSettings, StreamState, TrtllmEndpointCore, parse_reply
from llmlib.errors import BackendError, ConfigError
from llmlib.secrets import MASK, RedactingFilter, config_secrets, install_log_filter, redact, redact_obj, register
from tests.servers.mock_openai_server import MockOpenAIServer, MockOptions, output_ids
from tests.servers.tls import make_self_signed, make_tls_files

pytestmark = pytest.mark.timeout(60)

OUT = 12
KEY = "sk-test-9f8e7d6c5b4a-do-not-leak"


# --- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["ca-signed", "self-signed"])
def tls_files(request, tmp_path_factory):
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it, or one self-signed
    certificate that is its own trust anchor (PEM files)."""
    folder = tmp_path_factory.mktemp("tls")
    return make_tls_files(folder) if request.param == "ca-signed" else make_self_signed(folder)


@pytest.fixture
def serve():
    """serve(options=None, ssl_context=None) -> a started MockOpenAIServer, stopped after the test."""
    made = []

    def start(options: MockOptions | None = None, ssl_context=None) -> MockOpenAIServer:
        server = MockOpenAIServer(options or MockOptions(output_tokens=OUT), ssl_context=ssl_context)
        server.start()
        made.append(server)
        return server

    yield start
    for s in made:
        s.stop()


@pytest.fixture
def tls_mock(serve, tls_files):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_files.cert, tls_files.key)
    return serve(ssl_context=ctx)


@pytest.fixture
def make_core(make_config, tiny_benchmark):
    """make_core(sink, url, dataset=None, **settings) -> a TrtllmEndpointCore, stopped after the test."""
    made = []

    def make(sink, url, dataset=None, **settings):
        settings.setdefault("request_timeout_s", 10.0)
        settings.setdefault("health_timeout_s", 2.0)
        s = EndpointSettings(urls=(url,), **settings)
        core = TrtllmEndpointCore(s, rank=0, sink=sink, inputs=TrtllmEndpointCore.core_inputs(s, dataset))
        made.append(core)
        return core

    yield make
    for core in made:
        core.stop()


def req(rid: int, streaming: bool, n_in: int = 5) -> Request:
    return Request(rid, np.arange(rid, rid + n_in, dtype=np.int32), 64, streaming, sample_index=rid)


def health_error(core) -> BackendError:
    with pytest.raises(BackendError) as info:
        core.health_check()
    return info.value


# --- URLs: scheme and path prefix ---------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["/llm/v1", "/llm", "/llm/v1/"])
def test_a_path_prefix_is_kept(serve, make_core, recorder, suffix):
    """`.../llm/v1` is the API base and `.../llm` a prefix before /v1: both reach /llm/v1/completions."""
    mock = serve(MockOptions(output_tokens=OUT, path_prefix="/llm"))
    core = make_core(recorder, f"http://{mock.url}{suffix}")
    assert core.address == f"http://{mock.url}" + suffix.rstrip("/")
    core.health_check()
    r = req(1, True)
    core.enqueue([r])
    assert recorder.wait_final(1, 10)
    assert recorder.completed[1][0].tolist() == output_ids(r.input_tokens.tolist(), OUT, 1000)


def test_a_missing_path_prefix_is_a_final_404_naming_the_prefix(serve, make_core, recorder):
    mock = serve(MockOptions(output_tokens=OUT, path_prefix="/llm"))
    err = health_error(make_core(recorder, mock.url))
    assert err.final and "HTTP 404" in err.cause and "path prefix" in err.cause


# --- TLS ----------------------------------------------------------------------------------------------
def test_https_verified_with_the_ca_file(tls_mock, make_core, recorder, tls_files):
    core = make_core(recorder, f"https://{tls_mock.url}/v1", ca_file=tls_files.ca, api_key=KEY)
    core.health_check()
    reqs = [req(1, True), req(2, False)]
    core.enqueue(reqs)
    assert recorder.wait_final(2, 10)
    assert not recorder.failed, recorder.failed
    for r in reqs:
        assert recorder.completed[r.request_id][0].tolist() == output_ids(r.input_tokens.tolist(), OUT, 1000)
    assert tls_mock.stats["completed"] >= 2  # (the health check's token-id probe is one more)


def test_https_without_the_ca_is_refused_with_a_clear_final_error(tls_mock, make_core, recorder):
    err = health_error(make_core(recorder, f"https://{tls_mock.url}"))
    assert err.final
    assert "certificate" in err.cause and "did not verify" in err.cause and "--trtllm_ca_file" in err.cause
    assert "\n" not in str(err)
    assert tls_mock.stats["generate_requests"] == 0  # nothing was sent (the key neither)


def test_requests_to_an_unverified_server_fail_as_data(tls_mock, make_core, recorder):
    core = make_core(recorder, f"https://{tls_mock.url}", api_key=KEY)
    core.enqueue([req(1, True)])
    assert recorder.wait_final(1, 10)
    cause = recorder.failed[1][0].cause
    assert "connection failed" in cause and "did not verify" in cause


def test_https_to_a_plain_http_server_is_a_final_tls_error(serve, make_core, recorder):
    mock = serve()
    err = health_error(make_core(recorder, f"https://{mock.url}"))
    assert err.final and "TLS handshake" in err.cause and "http:// vs https://" in err.cause


def test_a_bad_ca_file_is_a_config_error_before_anything_starts(make_config, tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    for path, what in ((bad, "PEM"), (tmp_path / "missing.pem", "cannot be used")):
        config = make_config(trtllm_server_urls="https://127.0.0.1:1", trtllm_ca_file=str(path))
        with pytest.raises(ConfigError, match="--trtllm_ca_file") as info:
            TrtllmEndpointCore.num_cores(config)
        assert what in str(info.value)


# --- where a key may go ---------------------------------------------------------------------------------
@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "key.txt"
    path.write_text(KEY + "\n")
    return str(path)


def test_no_key_over_plain_http_to_a_remote_host(make_config, key_file):
    config = make_config(trtllm_server_urls="127.0.0.1:8000,http://10.1.2.3:8000/v1", openai_api_key_file=key_file)
    with pytest.raises(ConfigError) as info:
        TrtllmEndpointCore.num_cores(config)
    message = str(info.value)
    assert "http://10.1.2.3:8000/v1" in message and "cleartext" in message
    assert "--allow_api_key_over_http" in message and KEY not in message and "\n" not in message
    # allowed: said explicitly, over https, to loopback hosts, or without a key
    for values in ({"allow_api_key_over_http": "true"}, {"trtllm_server_urls": "https://10.1.2.3/v1"},
                   {"trtllm_server_urls": "localhost:8000,http://[::1]:8000,127.0.0.2:1"},
                   {"openai_api_key_file": ""}):
        cfg = make_config(**{"trtllm_server_urls": "http://10.1.2.3:8000/v1", "openai_api_key_file": key_file,
                             **values})
        assert TrtllmEndpointCore.num_cores(cfg) >= 1


# --- redaction ----------------------------------------------------------------------------------------
def test_a_key_echoed_by_the_server_is_redacted_from_every_cause(serve, make_core, recorder):
    """The mock echoes the Authorization header in its error bodies, an error header and a malformed
    chunk: no cause carries the key, each carries the mask where the key was."""
    mock = serve(MockOptions(output_tokens=OUT, echo_key=True, fail_rate=1.0))
    core = make_core(recorder, mock.url, api_key=KEY)
    core.enqueue([req(1, True), req(2, False)])
    assert recorder.wait_final(2, 10)
    mock.options.fail_rate, mock.options.malformed_rate = 0.0, 1.0
    core.enqueue([req(3, True)])
    assert recorder.wait_final(3, 10)
    causes = [recorder.failed[i][0].cause for i in (1, 2, 3)]
    for cause in causes:
        assert KEY not in cause and MASK in cause, cause
    assert "HTTP 500: injected server error (request had Authorization: Bearer [redacted])" in causes[0]
    # 503 while starting, echoed: the health cause too
    starting = serve(MockOptions(echo_key=True, startup_delay_s=30))
    err = health_error(make_core(recorder, starting.url, api_key=KEY))
    assert not err.final and "HTTP 503" in err.cause and KEY not in str(err) and MASK in err.cause


def test_redact_masks_every_form_of_a_secret():
    register("sk-x/y+z \"q\"")
    text = 'a sk-x/y+z "q" b sk-x%2Fy%2Bz%20%22q%22 c sk-x/y+z \\"q\\" d'
    assert redact(text) == f"a {MASK} b {MASK} c {MASK} d"
    assert redact("other-secret!", ["other-secret"]) == f"{MASK}!"
    assert redact_obj({"errors": ["k=other-secret"], "n": 3}, ["other-secret"]) == {"errors": [f"k={MASK}"], "n": 3}


def test_config_secrets_reads_and_registers_the_key(make_config, key_file):
    assert config_secrets(make_config(openai_api_key_file=key_file)) == (KEY,)
    assert config_secrets(make_config()) == ()
    assert redact(f"x {KEY} y") == f"x {MASK} y"


def test_the_log_filter_masks_messages_arguments_and_tracebacks():
    register(KEY)
    stream = io.StringIO()
    logger = logging.getLogger("llmlib.test_redaction")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        flt = install_log_filter(logger)
        assert isinstance(flt, RedactingFilter) and install_log_filter(logger) is flt
        assert handler.filters == [flt]
        logger.warning("server said %s", f"bad key {KEY}")
        try:
            raise ValueError(f"echo: {KEY}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert KEY not in out and out.count(MASK) == 2 and "ValueError: echo: [redacted]" in out


# --- health: retryable or final -------------------------------------------------------------------------
def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_causes_that_can_heal_are_not_final(serve, make_core, recorder):
    refused = health_error(make_core(recorder, f"127.0.0.1:{free_port()}"))
    assert not refused.final and "not reachable" in refused.cause
    starting = serve(MockOptions(startup_delay_s=30))
    err = health_error(make_core(recorder, starting.url))
    assert not err.final and "HTTP 503" in err.cause and err.cause.endswith("server is starting")


def test_health_causes_that_cannot_heal_are_final(serve, make_core, recorder):
    mock = serve(MockOptions(no_models=True))
    err = health_error(make_core(recorder, mock.url))
    assert err.final and "HTTP 404" in err.cause and "not an OpenAI-compatible server" in err.cause
    mock2 = serve()
    err = health_error(make_core(recorder, mock2.url, model="llama-405b"))
    assert err.final and "'llama-405b' is not served" in err.cause and "mock-model" in err.cause


def test_a_server_that_refuses_token_ids_is_named_in_one_line(serve, make_core, recorder):
    """llama-cpp-python's answer (HTTP 500, one validation error per prompt element) becomes one short
    line naming --trtllm_prompt_text_column: in the health check (final) and on each request."""
    mock = serve(MockOptions(output_tokens=OUT, refuse_token_ids=True))
    core = make_core(recorder, mock.url)
    err = health_error(core)
    assert err.final and "--trtllm_prompt_text_column" in err.cause and "refuses token-id prompts" in err.cause
    assert "\n" not in str(err) and len(str(err)) < 300
    core.enqueue([req(1, True, n_in=100), req(2, False, n_in=100)])  # 101 validation errors each
    assert recorder.wait_final(2, 10)
    for i in (1, 2):
        cause = recorder.failed[i][0].cause
        assert "--trtllm_prompt_text_column" in cause and len(cause) < 300 and "list[str].50" not in cause


def test_the_probe_passes_servers_that_take_token_ids_and_is_sent_once(serve, make_core, recorder):
    mock = serve()
    core = make_core(recorder, mock.url, api_dialect="vllm")  # a fixed dialect: the one token-id probe
    core.health_check()
    core.health_check()
    assert mock.stats["generate_requests"] == 1
    texts = make_core(recorder, mock.url, probe_token_ids=False, api_dialect="vllm")
    texts.health_check()
    assert mock.stats["generate_requests"] == 1
    auto = make_core(recorder, mock.url)  # auto: one reply and one stream, once
    auto.health_check()
    auto.health_check()
    assert mock.stats["generate_requests"] == 3 and auto.dialect.name == "vllm"


# --- reasoning streams ------------------------------------------------------------------------------------
TEXTS = SimpleNamespace(input_texts=[f"question {i}" for i in range(8)])


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
@pytest.mark.parametrize("with_ids", [True, False])
def test_reasoning_is_the_first_token_and_counts(serve, make_core, recorder, field, with_ids):
    """10 of 12 tokens are thinking at 40 ms each: the first token comes with the first thinking
    delta (~30 ms), not with the first answer delta (~430 ms); all 12 count, ids or usage."""
    mock = serve(MockOptions(output_tokens=OUT, reasoning_tokens=10, reasoning_field=field, token_ids=with_ids,
                             first_token_delay_ms=30, per_token_delay_ms=40))
    core = make_core(recorder, mock.url, dataset=TEXTS, use_chat=True)
    core.health_check()
    start = time.monotonic()
    core.enqueue([req(1, True)])
    assert recorder.wait_final(1, 10)
    first = next(t for kind, rid, _, t, _ in recorder.events if kind == "first" and rid == 1)
    final = next(t for kind, rid, _, t, _ in recorder.events if kind != "first" and rid == 1)
    assert first - start < 0.25 and final - start > 0.4, (first - start, final - start)
    ids, n, _ = recorder.completed[1]
    assert n == OUT and core.token_sources == {("token_ids" if with_ids else "usage"): 1}
    if with_ids:
        assert ids.tolist() == output_ids([len("question 1")], OUT, 1000)  # thinking and answer, in order


def test_reasoning_only_streams_count_by_chunks():
    """A stream with no ids and no usage: reasoning chunks are counted like content chunks."""
    state = StreamState()
    ev = [b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'] + \
        [b'{"choices":[{"index":0,"delta":{"reasoning_content":"t%d "}}]}' % i for i in range(5)] + \
        [b'{"choices":[{"index":0,"delta":{"content":"a%d "}}]}' % i for i in range(3)] + \
        [b'{"choices":[{"index":0,"delta":{"reasoning":"r"},"finish_reason":"length"}]}']
    first = [state.feed(b"data: " + e + b"\n\n") for e in ev]
    assert first.index(True) == 1 and first.count(True) == 1  # the first thinking delta
    state.feed(b"data: [DONE]\n\n")
    assert state.done and state.result()[1:] == (9, "chunks")


def test_non_streamed_reply_with_reasoning(serve, make_core, recorder):
    mock = serve(MockOptions(output_tokens=OUT, reasoning_tokens=5))
    core = make_core(recorder, mock.url, dataset=TEXTS, use_chat=True)
    core.health_check()
    core.enqueue([req(2, False)])
    assert recorder.wait_final(1, 10)
    assert recorder.completed[2][1] == OUT
    body = (b'{"choices":[{"message":{"role":"assistant","content":"42","reasoning_content":"t t t"}}],'
            b'"usage":{"completion_tokens":4}}')
    assert parse_reply(body)[1:] == (4, "usage")


# --- the server's words, once ------------------------------------------------------------------------------
def test_server_message_takes_the_servers_words_once():
    from llmlib.cores.trtllm_endpoint_core import refuses_token_ids, server_message

    assert server_message(b'{"error":{"message":"The model `x` does not exist.","type":"NotFound","code":404}}') \
        == "The model `x` does not exist."
    assert server_message(b'{"detail":[{"loc":["body","prompt"],"msg":"field required"},{"loc":["body","n"],'
                          b'"msg":"bad"}]}') == "body.prompt: field required (+1 more)"
    assert server_message(b'{"error":"Input validation error: `inputs` must have less than 4096 tokens"}') \
        == "Input validation error: `inputs` must have less than 4096 tokens"
    assert server_message(b"<html>\n<body>502 Bad Gateway</body>\n</html>") == \
        "<html> <body>502 Bad Gateway</body> </html>"
    assert len(server_message(b"x" * 5000)) < 210
    # TGI's OpenAI route and llama-cpp-python's: the prompt must be text; other errors are not that
    assert refuses_token_ids(422, b"Failed to deserialize the JSON body into the target type: prompt: invalid type: "
                                  b"sequence, expected a string at line 1 column 30")
    assert refuses_token_ids(500, b'{"error":{"message":"2 validation errors: {\'type\': \'string_type\', \'loc\': '
                                  b'(\'body\', \'prompt\', \'str\'), \'msg\': \'Input should be a valid string\'}"}}')
    assert not refuses_token_ids(500, b'{"error":{"message":"injected server error"}}')
    assert not refuses_token_ids(200, b'{"prompt": "a valid string"}')
