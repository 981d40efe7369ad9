"""HTTP views of the worker (Faust's web server, no extra threads): /metrics, health and
on-demand audit checkpoints."""

from __future__ import annotations

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def install(app: faust.App, runtime) -> None:
    @app.page("/metrics")
    async def metrics_view(self, request):
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health")
    async def health(self, request):
        return self.json({"status": "ok", "policy_version": runtime.policy.version})

    @app.page("/audit/checkpoint")
    class CheckpointNow(faust.web.View):
        async def post(self, request):
            app.masb_checkpoint_requested.set()
            return self.json({"requested": True}, status=202)
