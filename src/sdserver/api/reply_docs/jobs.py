"""Replies of the job routes: every job-creating endpoint and `fetch` answer a job envelope; `cancel` its own."""

from __future__ import annotations

from sdserver.api.reply_docs.declare import BASE_CODES, IMAGE_CODES, JOB_CODES, Replies
from sdserver.api.reply_docs.envelopes import CancelReply, JobReply
from sdserver.errors import NotFoundError

# Generation, ControlNet, super resolution: the request is checked, its images stored, the job queued.
_JOB_STATE = (
    "The job's state: `success` with the outputs (after a short wait), `processing` (poll `fetch_result`), or "
    "`failed` with the reason."
)
JOB_REPLIES = Replies(ok=JobReply, codes=(*BASE_CODES, *IMAGE_CODES, *JOB_CODES), description=_JOB_STATE)
FETCH_REPLIES = Replies(ok=JobReply, codes=(*BASE_CODES, NotFoundError.code), description=_JOB_STATE)
CANCEL_REPLIES = Replies(ok=CancelReply, codes=(*BASE_CODES, NotFoundError.code))
