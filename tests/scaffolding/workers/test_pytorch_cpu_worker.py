"""PytorchCPUWorker on the project's tiny Llama: greedy generation through ScaffoldingLlm reproduces
the reference outputs of the tiny dataset (token and text prompts); shutdown stops the worker process."""

from __future__ import annotations

import pytest

from scaffolding import GenerationTask, NativeGenerationController, ScaffoldingLlm, StreamGenerationTask

pytestmark = pytest.mark.timeout(300)


def test_a_folder_without_a_checkpoint_is_refused_at_once(tmp_path):
    from scaffolding.workers.pytorch_cpu_worker import PytorchCPUWorker

    with pytest.raises(ValueError, match="has no config.json; expected a transformers checkpoint folder"):
        PytorchCPUWorker(tmp_path)


@pytest.mark.slow
def test_greedy_generation_reproduces_the_tiny_reference():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import pandas as pd

    from llmlib.tiny_model import DATASET_FILE, ensure_tiny_model
    from scaffolding.workers.pytorch_cpu_worker import PytorchCPUWorker

    model_dir = ensure_tiny_model()
    frame = pd.read_pickle(model_dir / DATASET_FILE)
    rows = frame.iloc[:4]
    worker = PytorchCPUWorker(model_dir, max_batch_size=4, max_num_tokens=1024, max_tokens=64,
                              threads_per_worker=1, streaming=True)
    process = worker.server.cores[0]._proc
    llm = ScaffoldingLlm(NativeGenerationController(), {"generation": worker})
    try:
        by_tokens = llm.generate([list(r.tok_input) for r in rows.itertuples()])  # four at once
        by_text = llm.generate(rows.iloc[0].input)
    finally:
        llm.shutdown()
    for task, row in zip(by_tokens, rows.itertuples()):
        assert task.output_tokens == list(row.tok_output)
        assert task.output_str == row.output
        assert task.finish_reason == ("length" if len(row.tok_output) == 64 else "stop")
        assert task.prompt_tokens == len(row.tok_input) and 0 < task.ttft_s <= task.latency_s
    first = rows.iloc[0]
    assert by_text.output_tokens == list(first.tok_output) and by_text.prompt_tokens == len(first.tok_input)
    assert worker.info[0]["device"] == "cpu"
    assert not process.is_alive()  # ScaffoldingLlm.shutdown stopped the worker process
    assert worker.server.counts.accounted


@pytest.mark.slow
def test_sampling_defaults_and_stream_steps():
    pytest.importorskip("torch")
    from llmlib.tiny_model import ensure_tiny_model
    from scaffolding import Controller
    from scaffolding.workers.pytorch_cpu_worker import PytorchCPUWorker

    class Sample(Controller):
        def process(self, tasks, **kwargs):
            greedy = GenerationTask(input_str="the red dog", temperature=0.0)
            sampled = GenerationTask(input_str="the red dog", seed=1)
            stream = StreamGenerationTask(input_str="the red dog", temperature=0.0)
            yield [greedy, sampled]
            steps = 0
            while not stream.end_flag:
                yield [stream]
                steps += 1
            return greedy, sampled, stream, steps

    with PytorchCPUWorker(ensure_tiny_model(), max_tokens=8, temperature=1.0, top_k=50,
                          threads_per_worker=1) as worker:
        req = worker.build_request(GenerationTask(input_str="the red dog"), streaming=False)
        assert (req.params.temperature, req.params.top_k, req.max_new_tokens) == (1.0, 50, 8)
        assert req.stop_token_ids == (worker.tokenizer.eos_token_id,)
        with ScaffoldingLlm(Sample(), {"generation": worker}) as llm:
            greedy, sampled, stream, steps = llm.generate("x")
        assert not worker.server.cores[0]._proc.is_alive()
    assert 1 <= len(greedy.output_tokens) <= 8 and len(sampled.output_tokens) <= 8
    # the task's temperature 0 wins over the worker's default 1.0: greedy, so the stream repeats it
    assert stream.output_tokens == greedy.output_tokens and stream.finish_reason == greedy.finish_reason
    # the hf core streams chunks: a step per token that came apart (tokens that came while the
    # controller was away arrive together), the step that ends the task included
    assert 1 <= steps <= len(stream.output_tokens) + 1
