"""bench stack's server thread summary (bench/whole_stack.server_threads)."""

from __future__ import annotations

from bench.whole_stack import server_threads


def test_the_loop_is_the_thread_named_grpc_loop_and_the_rest_add_up() -> None:
    threads = [  # thread_cpu's rows: busiest first
        {"thread": "grpc_global_tim", "tid": 4102, "cpu_pct": 30.0, "runqueue_wait_pct": 9.0},
        {"thread": "grpc-loop", "tid": 4105, "cpu_pct": 25.5, "runqueue_wait_pct": 12.5},
        {"thread": "rdk:broker1", "tid": 4107, "cpu_pct": 2.25},
    ]
    summary = server_threads(threads, server_pid=4100)
    assert summary == {
        "loop_cpu_pct": 25.5,
        "loop_runqueue_wait_pct": 12.5,
        "other_threads_cpu_pct": 32.2,
        "busiest_other_thread": "grpc_global_tim 30.0 %",
    }


def test_no_sample_of_the_server_says_so_instead_of_failing() -> None:
    assert server_threads([], server_pid=4100) == {
        "loop_cpu_pct": 0.0,
        "loop_runqueue_wait_pct": None,
        "other_threads_cpu_pct": 0.0,
        "busiest_other_thread": "",
    }


def test_without_a_named_loop_the_main_thread_stands_in() -> None:
    threads = [
        {"thread": "python", "tid": 4101, "cpu_pct": 40.0, "runqueue_wait_pct": 3.0},
        {"thread": "python", "tid": 4100, "cpu_pct": 10.0, "runqueue_wait_pct": 1.0},
    ]
    summary = server_threads(threads, server_pid=4100)
    assert summary["loop_cpu_pct"] == 10.0
    assert summary["other_threads_cpu_pct"] == 40.0
