"""The worker process of one job of the study: ``python -m ssanet.ablation '<job spec as JSON>'``
(:func:`ssanet.ablation.scheduling.run_job`)."""

import json
import sys

from .scheduling import run_job

if __name__ == "__main__":
    run_job(json.loads(sys.argv[1]))
