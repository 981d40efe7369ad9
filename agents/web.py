"""HTTP views of the worker (Faust's web server, no extra threads): /metrics, /health, /ready and
on-demand audit checkpoints; with MASB_FAULT_INJECTION=1 also the fault endpoints of agents/faults.py.

    GET /health   liveness: 200 unless the worker is failing for good (503); the body reports every
                  component (broker, tasks, partitions, checkpoint) so an outage shows while it lasts
    GET /ready    readiness: 200 only when every component is ok, else 503 with the problems
"""

from __future__ import annotations

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def install(app: faust.App, runtime) -> None:
    @app.page("/metrics")
    async def metrics_view(self, request):
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    def report() -> dict:
        return {**runtime.health.report(), "policy_version": runtime.policy.version}

    @app.page("/health")
    async def health(self, request):
        body = report()
        return self.json(body, status=503 if body["status"] == "failing" else 200)

    @app.page("/ready")
    async def ready(self, request):
        body = report()
        return self.json(body, status=200 if body["status"] == "ok" else 503)

    @app.page("/audit/checkpoint")
    class CheckpointNow(faust.web.View):
        async def post(self, request):
            app.masb_checkpoint_requested.set()
            return self.json({"requested": True}, status=202)

    if runtime.settings.fault_injection:
        @app.page("/debug/asyncio")
        async def asyncio_tasks(self, request):
            """Every asyncio task of the worker and where it waits (diagnosis of a stuck worker)."""
            import asyncio
            import io

            out = io.StringIO()
            for task in asyncio.all_tasks():
                out.write(f"--- {task.get_name()}\n")
                awaited = task.get_coro()
                while awaited is not None:  # the chain of awaits, outermost first
                    frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
                    where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame else ""
                    out.write(f"    {getattr(awaited, '__qualname__', type(awaited).__name__)} {where}\n")
                    inner = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None) or \
                        getattr(awaited, "gi_yieldfrom", None)
                    if inner is None and type(awaited).__name__ == "coroutine_wrapper":
                        import gc  # coro.__await__() hides its coroutine; gc knows what it holds

                        inner = next((r for r in gc.get_referents(awaited) if hasattr(r, "cr_frame")), None)
                    awaited = inner
            return self.text(out.getvalue())

        @app.page("/debug/memory")
        async def memory(self, request):
            """Object counts by type, and with PYTHONTRACEMALLOC set the top allocation sites
            (diagnosis of memory growth; only MASB's own code and libraries' names, no values)."""
            import collections
            import gc
            import tracemalloc

            counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
            lines = [f"{n:>10} {name}" for name, n in counts.most_common(40)]
            if tracemalloc.is_tracing():
                stats = tracemalloc.take_snapshot().statistics("lineno")[:40]
                lines += ["--- tracemalloc (size, count, line)"]
                lines += [f"{s.size / 1024:>10.0f} KiB {s.count:>8} {s.traceback[0]}" for s in stats]
            return self.text("\n".join(lines) + "\n")

        @app.page("/debug/tasks/{name}/{fault}")
        class InjectFault(faust.web.View):
            async def post(self, request, name: str, fault: str):
                if fault == "cancel":
                    return self.json({"cancelled": runtime.supervisor.cancel(name)})
                if fault == "hold":
                    seconds = float(request.query.get("seconds", "10"))
                    runtime.faults.hold_for(name, seconds)
                    return self.json({"holding": name, "seconds": seconds})
                return self.json({"error": f"unknown fault {fault}"}, status=404)
