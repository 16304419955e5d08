"""What the websocket told of a run stands in for /history only when it told all of it."""

from comfyui_server.core.comfyui.monitor import Watch


def told(watch: Watch, connection: int = 1) -> Watch:
    watch.node_order = ("9", "3")
    watch.heard_on = connection
    watch.succeeded = True
    return watch


async def test_outputs_keep_the_prompts_order_then_nodes_expanded_while_running():
    watch = told(Watch("p"))
    image = {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}
    watch.outputs = {"12.0.3": image, "3": image, "9": image}  # arrival order
    entry = watch.heard_entry(1)
    assert list(entry["outputs"]) == ["9", "3", "12.0.3"]
    assert entry["status"]["status_str"] == "success"


async def test_a_run_not_told_in_full_falls_back_to_history():
    assert told(Watch("p")).heard_entry(2) is None  # a reconnect since execution_start
    cached = told(Watch("p"))
    cached.cached_any = True
    assert cached.heard_entry(1) is None
    failed = told(Watch("p"))
    failed.succeeded = False
    assert failed.heard_entry(1) is None
    adopted = told(Watch("p"))
    adopted.node_order = None  # a prompt this process did not post
    assert adopted.heard_entry(1) is None
