"""One module per figure of issue #9; each has `async def run(ctx) -> CaseResult`."""
