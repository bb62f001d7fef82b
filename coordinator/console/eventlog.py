"""The console's event log page: the log's state and its entries."""
from __future__ import annotations


from fastapi import APIRouter, Query, Request

from custody.eventlog import service as log_service

from coordinator.auth import route
from coordinator.console.pages import render
from coordinator.context import read

router = APIRouter()


@route(router, "GET", "/log", "log.read", page=True)
def log_page(request: Request, page: int = Query(1, ge=1, le=100_000), subject: str = ""):
    page = max(page, 1)
    with read(request) as s:
        status = log_service.log_status(s)
        entries = log_service.log_entries(s, subject=subject or None, offset=(page - 1) * 100, limit=100)
    pages = max((entries["total"] + 99) // 100, 1)
    return render(request, "log.html", status=status, entries=entries, page=page, pages=pages, subject=subject)
