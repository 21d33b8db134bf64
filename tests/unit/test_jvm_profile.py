"""bench/ingest/jvm_profile.py: async-profiler's collapsed stacks summed into shares."""

from __future__ import annotations

from pathlib import Path

from bench.ingest.jvm_profile import OTHER, kind_of, summarize, thread_name

USER_THREAD = "[user features + triggers + CF (user half) (1/1)#0 tid=6021]"
TASK = "java/lang/Thread.run;org/apache/flink/streaming/runtime/tasks/StreamTask.invoke"
PY_CALL = (
    "org/apache/flink/streaming/api/operators/python/embedded/"
    "AbstractOneInputEmbeddedPythonFunctionOperator.processElement;"
    "pemja/core/object/PyIterator.hasNext;pemja/core/object/PyIterator.next"
)
END_OF_CALL = "java/util/NoSuchElementException.<init>;java/lang/Throwable.fillInStackTrace"


def test_thread_names_lose_their_ids_and_numbers():
    assert thread_name(USER_THREAD) == "user features + triggers + CF (user half) (#/#)##"
    assert (
        thread_name("[kafka-producer-network-thread | producer-12 tid=77]")
        == "kafka-producer-network-thread | producer-#"
    )


def test_kinds_by_thread_first_then_by_frames():
    assert kind_of("C2 CompilerThre", ["Compile::Compile"]) == "JIT compilers"
    # The end-of-call exception is under a Python call, and counted apart from it.
    frames = f"{TASK};{PY_CALL};{END_OF_CALL}".split(";")
    assert kind_of("user features", frames) == "pemja: end-of-call exception"
    assert kind_of("user features", f"{TASK};{PY_CALL};_PyEval_EvalFrameDefault".split(";")) == (
        "inside Python operator calls"
    )
    assert kind_of("kafka-producer-network-thread | producer-#", ["Sender.run"]) == (
        "Kafka sinks (produce, compress, send)"
    )
    assert kind_of("VM Periodic Task Thread", ["os::javaTimeNanos"]) == OTHER


def test_shares_of_the_samples(tmp_path: Path):
    collapsed = tmp_path / "jvm.txt"
    collapsed.write_text(
        "\n".join(
            [
                f"{USER_THREAD};{TASK};{PY_CALL};_PyEval_EvalFrameDefault 60",
                f"{USER_THREAD};{TASK};{PY_CALL};{END_OF_CALL} 5",
                "[C2 CompilerThread0 tid=12];Compile::Compile;PhaseChaitin::Split 25",
                "[GC Thread#0 tid=9];G1ParScanThreadState::trim_queue 10",
                "not a sample line",
                "",
            ]
        )
    )
    s = summarize(collapsed)
    assert s["samples"] == 100
    assert dict(s["kinds_pct"]) == {
        "inside Python operator calls": 60.0,
        "JIT compilers": 25.0,
        "garbage collector": 10.0,
        "pemja: end-of-call exception": 5.0,
    }
    threads = dict(s["threads_pct"])
    assert threads["user features + triggers + CF (user half) (#/#)##"] == 65.0
    assert threads["C# CompilerThread#"] == 25.0
    assert dict(s["leaf_frames_pct"])["_PyEval_EvalFrameDefault"] == 60.0


def test_an_empty_recording_says_so(tmp_path: Path):
    collapsed = tmp_path / "jvm.txt"
    collapsed.write_text("")
    assert summarize(collapsed) == {"samples": 0}
