"""500 submissions at once over HTTP, on SQLite and on PostgreSQL: all recorded, none lost,
no "database is locked", no pool exhaustion."""

import asyncio

import httpx


async def submit_all(api: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(
                    api,
                    json={
                        "service_type": "blank",
                        "params": {"color": i},
                        "client_task_id": f"burst-{i}",
                    },
                )
                for i in range(count)
            )
        )


def test_500_concurrent_submissions(db_url, comfyui_emulator, server_factory):
    comfyui_emulator.hang()  # keep them queued: this is about recording, not running
    server = server_factory([comfyui_emulator], env={"DATABASE_URL": db_url, "DB_POOL_SIZE": "5"})
    responses = asyncio.run(submit_all(server.api, 500))
    assert [r.status_code for r in responses].count(200) == 500, {
        r.status_code: r.text[:200] for r in responses if r.status_code != 200
    }
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 500
    listed, cursor = [], None
    while True:
        params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(server.api + "/tasks", params=params)
        listed += [t["id"] for t in page.json()]
        cursor = page.headers.get("x-next-cursor")
        if not cursor:
            break
    assert set(listed) == ids
