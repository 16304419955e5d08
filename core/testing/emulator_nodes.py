"""The model-free nodes the ComfyUI emulator really executes, with Pillow instead of torch.

Each node keeps the exact `/object_info` entry recorded from ComfyUI 0.3.64 (`OBJECT_INFO`), so
validation errors and `/object_info` answers are the real ones, while the work is cheap enough
for tests and benchmarks. Node functions are synchronous and run in a worker thread.
"""

from __future__ import annotations

import hashlib
import io
import json
import mimetypes
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageFilter, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

Images = list[Image.Image]
ProgressHook = Callable[[int, int, bytes | None], None]

OBJECT_INFO: dict[str, dict[str, Any]] = {
    "EmptyImage": {
        "input": {
            "required": {
                "width": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
                "height": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
                "color": [
                    "INT",
                    {"default": 0, "min": 0, "max": 16777215, "step": 1, "display": "color"},
                ],
            }
        },
        "input_order": {"required": ["width", "height", "batch_size", "color"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "name": "EmptyImage",
        "display_name": "EmptyImage",
        "description": "",
        "python_module": "nodes",
        "category": "image",
        "output_node": False,
    },
    "LoadImage": {
        "input": {"required": {"image": [[], {"image_upload": True}]}},
        "input_order": {"required": ["image"]},
        "output": ["IMAGE", "MASK"],
        "output_is_list": [False, False],
        "output_name": ["IMAGE", "MASK"],
        "name": "LoadImage",
        "display_name": "Load Image",
        "description": "",
        "python_module": "nodes",
        "category": "image",
        "output_node": False,
    },
    "ImageInvert": {
        "input": {"required": {"image": ["IMAGE"]}},
        "input_order": {"required": ["image"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "name": "ImageInvert",
        "display_name": "Invert Image",
        "description": "",
        "python_module": "nodes",
        "category": "image",
        "output_node": False,
    },
    "ImageScale": {
        "input": {
            "required": {
                "image": ["IMAGE"],
                "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]],
                "width": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}],
                "height": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}],
                "crop": [["disabled", "center"]],
            }
        },
        "input_order": {"required": ["image", "upscale_method", "width", "height", "crop"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "name": "ImageScale",
        "display_name": "Upscale Image",
        "description": "",
        "python_module": "nodes",
        "category": "image/upscaling",
        "output_node": False,
    },
    "ImageBlur": {
        "input": {
            "required": {
                "image": ["IMAGE", {}],
                "blur_radius": ["INT", {"default": 1, "min": 1, "max": 31, "step": 1}],
                "sigma": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}],
            }
        },
        "input_order": {"required": ["image", "blur_radius", "sigma"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "output_tooltips": [None],
        "name": "ImageBlur",
        "display_name": None,
        "description": "",
        "python_module": "comfy_extras.nodes_post_processing",
        "category": "image/postprocessing",
        "output_node": False,
        "deprecated": False,
        "experimental": False,
        "api_node": False,
    },
    "SaveImage": {
        "input": {
            "required": {
                "images": ["IMAGE", {"tooltip": "The images to save."}],
                "filename_prefix": [
                    "STRING",
                    {
                        "default": "ComfyUI",
                        "tooltip": (
                            "The prefix for the file to save. This may include formatting"
                            " information such as %date:yyyy-MM-dd% or %Empty Latent"
                            " Image.width% to include values from nodes."
                        ),
                    },
                ],
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        "input_order": {
            "required": ["images", "filename_prefix"],
            "hidden": ["prompt", "extra_pnginfo"],
        },
        "output": [],
        "output_is_list": [],
        "output_name": [],
        "name": "SaveImage",
        "display_name": "Save Image",
        "description": "Saves the input images to your ComfyUI output directory.",
        "python_module": "nodes",
        "category": "image",
        "output_node": True,
    },
    "PreviewImage": {
        "input": {
            "required": {"images": ["IMAGE"]},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        "input_order": {"required": ["images"], "hidden": ["prompt", "extra_pnginfo"]},
        "output": [],
        "output_is_list": [],
        "output_name": [],
        "name": "PreviewImage",
        "display_name": "Preview Image",
        "description": "Saves the input images to your ComfyUI output directory.",
        "python_module": "nodes",
        "category": "image",
        "output_node": True,
    },
    "SaveImageWebsocket": {
        "input": {"required": {"images": ["IMAGE"]}},
        "input_order": {"required": ["images"]},
        "output": [],
        "output_is_list": [],
        "output_name": [],
        "name": "SaveImageWebsocket",
        "display_name": "SaveImageWebsocket",
        "description": "",
        "python_module": "custom_nodes.websocket_image_save",
        "category": "api/image",
        "output_node": True,
    },
    "Clean input and output file": {
        "input": {
            "required": {
                "type": [["input", "output"], {"multiline": False, "default": "input"}],
                "path": ["STRING", {"multiline": False}],
            }
        },
        "input_order": {"required": ["type", "path"]},
        "output": ["STRING"],
        "output_is_list": [False],
        "output_name": ["STRING"],
        "name": "Clean input and output file",
        "display_name": "file_cleaner",
        "description": "",
        "python_module": "custom_nodes.ComfyUI-fileCleaner",
        "category": "utils",
        "output_node": True,
    },
    "EmptyLatentImage": {
        "input": {
            "required": {
                "width": [
                    "INT",
                    {
                        "default": 512,
                        "min": 16,
                        "max": 16384,
                        "step": 8,
                        "tooltip": "The width of the latent images in pixels.",
                    },
                ],
                "height": [
                    "INT",
                    {
                        "default": 512,
                        "min": 16,
                        "max": 16384,
                        "step": 8,
                        "tooltip": "The height of the latent images in pixels.",
                    },
                ],
                "batch_size": [
                    "INT",
                    {
                        "default": 1,
                        "min": 1,
                        "max": 4096,
                        "tooltip": "The number of latent images in the batch.",
                    },
                ],
            }
        },
        "input_order": {"required": ["width", "height", "batch_size"]},
        "output": ["LATENT"],
        "output_is_list": [False],
        "output_name": ["LATENT"],
        "name": "EmptyLatentImage",
        "display_name": "Empty Latent Image",
        "description": "Create a new batch of empty latent images to be denoised via sampling.",
        "python_module": "nodes",
        "category": "latent",
        "output_node": False,
        "output_tooltips": ["The empty latent image batch."],
    },
}

# PreviewImage draws its random infix from this alphabet (sic: no "w", two "p").
_PREVIEW_ALPHABET = "abcdefghijklmnopqrstupvxyz"
_PIL_RESAMPLING = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Folders:
    """The server's input/output/temp directories (absolute, normalised like ComfyUI's)."""

    input: str
    output: str
    temp: str

    def by_type(self, kind: str) -> str | None:
        return {"input": self.input, "output": self.output, "temp": self.temp}.get(kind)

    def annotated_path(self, name: str) -> str:
        """Resolve a LoadImage name; a `" [output]"`-style suffix picks another folder."""
        base = self.input
        for kind in ("output", "input", "temp"):
            if name.endswith(f"[{kind}]"):
                base, name = self.by_type(kind) or base, name[: -len(kind) - 3]
                break
        return os.path.join(base, name)


class NodeInterrupted(Exception):
    """An interrupt is pending: ComfyUI's InterruptProcessingException."""


@dataclass
class NodeContext:
    """What a running node may use besides its inputs."""

    node_id: str
    folders: Folders
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    state: dict[str, Any]
    progress: ProgressHook
    memory_limit: int


@dataclass
class NodeResult:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None


@dataclass(frozen=True)
class NodeClass:
    """One node type: its recorded object_info entry plus the emulator's implementation."""

    run: Callable[[NodeContext, dict[str, Any]], NodeResult]
    # ComfyUI's IS_CHANGED: part of the cache key. None means "never changes".
    is_changed: Callable[[dict[str, Any], Folders], Any] | None = None
    # ComfyUI's VALIDATE_INPUTS: gets the named inputs, returns True or an error string.
    validate: Callable[[dict[str, Any], Folders], bool | str] | None = None
    validate_inputs: tuple[str, ...] = ()
    hidden_inputs: tuple[str, ...] = ()


def _empty_image(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    width, height, batch = inputs["width"], inputs["height"], inputs.get("batch_size", 1)
    # ComfyUI builds float32 tensors one channel at a time; emulate an allocation failure of
    # that first channel instead of allocating gigabytes for real.
    channel_bytes = width * height * batch * 4
    if channel_bytes * 3 > ctx.memory_limit:
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            f"memory: you tried to allocate {channel_bytes} bytes. Error code 12 (Cannot "
            "allocate memory)"
        )
    color = inputs.get("color", 0)
    rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
    image = Image.new("RGB", (width, height), rgb)
    return NodeResult(([image] * batch,))


def _load_image(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    path = ctx.folders.annotated_path(inputs["image"])
    opened = Image.open(path)
    images: Images = []
    masks: list[Image.Image] = []
    for frame in ImageSequence.Iterator(opened):
        frame = ImageOps.exif_transpose(frame) or frame
        rgb = frame.convert("RGB")
        if images and rgb.size != images[0].size:
            continue
        images.append(rgb)
        has_alpha = "A" in frame.getbands() or (frame.mode == "P" and "transparency" in frame.info)
        alpha = frame.convert("RGBA").getchannel("A") if has_alpha else None
        masks.append(ImageOps.invert(alpha) if alpha else Image.new("L", (64, 64), 0))
    if opened.format == "MPO":
        images, masks = images[:1], masks[:1]
    return NodeResult((images, masks))


def _load_image_hash(inputs: dict[str, Any], folders: Folders) -> str:
    with open(folders.annotated_path(inputs["image"]), "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def _load_image_exists(inputs: dict[str, Any], folders: Folders) -> bool | str:
    if not os.path.exists(folders.annotated_path(inputs["image"])):
        return f"Invalid image file: {inputs['image']}"
    return True


def _invert(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    return NodeResult(([ImageOps.invert(image) for image in inputs["image"]],))


def _scale(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    images: Images = inputs["image"]
    width, height = inputs["width"], inputs["height"]
    if width == 0 and height == 0:
        return NodeResult((images,))
    old_w, old_h = images[0].size
    if width == 0:
        width = max(1, round(old_w * height / old_h))
    elif height == 0:
        height = max(1, round(old_h * width / old_w))
    box = (0, 0, old_w, old_h)
    if inputs["crop"] == "center":
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        box = (x, y, old_w - x, old_h - y)
    method = _PIL_RESAMPLING[inputs["upscale_method"]]
    return NodeResult(([image.resize((width, height), method, box) for image in images],))


def _blur(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    if inputs["blur_radius"] == 0:
        return NodeResult((inputs["image"],))
    blur = ImageFilter.GaussianBlur(radius=inputs["sigma"])
    return NodeResult(([image.filter(blur) for image in inputs["image"]],))


def save_image_path(
    prefix: str, output_dir: str, width: int, height: int
) -> tuple[str, str, int, str]:
    """ComfyUI's naming rule: (folder, file stem, next counter, subfolder) for a prefix."""
    if "%" in prefix:
        now = time.localtime()
        for key, value in (
            ("%width%", str(width)),
            ("%height%", str(height)),
            ("%year%", str(now.tm_year)),
            ("%month%", str(now.tm_mon).zfill(2)),
            ("%day%", str(now.tm_mday).zfill(2)),
            ("%hour%", str(now.tm_hour).zfill(2)),
            ("%minute%", str(now.tm_min).zfill(2)),
            ("%second%", str(now.tm_sec).zfill(2)),
        ):
            prefix = prefix.replace(key, value)
    subfolder = os.path.dirname(os.path.normpath(prefix))
    stem = os.path.basename(os.path.normpath(prefix))
    folder = os.path.join(output_dir, subfolder)
    common = os.path.commonpath((output_dir, os.path.abspath(folder)))
    if common != output_dir:
        # ComfyUI raises a bare Exception, so exception_type is "Exception".
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(folder)}"
            f"\n         output_dir: {output_dir}"
            f"\n         commonpath: {common}"
        )
    prefix_len = len(os.path.basename(prefix))
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        names = []
    counters = [0]
    for name in names:
        head, digits = name[: prefix_len + 1], name[prefix_len + 1 :].split("_")[0]
        if os.path.normcase(head[:-1]) == os.path.normcase(stem) and head[-1:] == "_":
            counters.append(int(digits) if digits.isdigit() else 0)
    return folder, stem, max(counters) + 1, subfolder


def _save_images(
    ctx: NodeContext, images: Images, prefix: str, folder: str, kind: str, compress_level: int
) -> NodeResult:
    width, height = images[0].size
    full_folder, stem, counter, subfolder = save_image_path(prefix, folder, width, height)
    metadata = PngInfo()
    metadata.add_text("prompt", json.dumps(ctx.prompt))
    for key, value in (ctx.extra_data.get("extra_pnginfo") or {}).items():
        metadata.add_text(key, json.dumps(value))
    results = []
    for batch_number, image in enumerate(images):
        name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        image.save(os.path.join(full_folder, name), pnginfo=metadata, compress_level=compress_level)
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return NodeResult((), {"images": results})


def _save_image(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    prefix = inputs.get("filename_prefix", "ComfyUI")
    return _save_images(ctx, inputs["images"], prefix, ctx.folders.output, "output", 4)


def _preview_image(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    # The infix lives on the node object, which ComfyUI keeps while the node id stays in use.
    infix = ctx.state.setdefault(
        "prefix_append", "_temp_" + "".join(random.choices(_PREVIEW_ALPHABET, k=5))
    )
    return _save_images(ctx, inputs["images"], "ComfyUI" + infix, ctx.folders.temp, "temp", 1)


def _save_image_websocket(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    images: Images = inputs["images"]
    for step, image in enumerate(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        ctx.progress(step, len(images), buffer.getvalue())
    return NodeResult(())


def _clean_file(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    base = ctx.folders.input if inputs["type"] == "input" else ctx.folders.output
    path = os.path.join(base, inputs["path"])
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found")
    os.remove(path)
    return NodeResult((f"{path} deleted",))


def _empty_latent(ctx: NodeContext, inputs: dict[str, Any]) -> NodeResult:
    shape = (inputs["batch_size"], 4, inputs["height"] // 8, inputs["width"] // 8)
    return NodeResult(({"samples": shape},))


_SAVE_HIDDEN = ("prompt", "extra_pnginfo")

NODE_CLASSES: dict[str, NodeClass] = {
    "EmptyImage": NodeClass(_empty_image),
    "LoadImage": NodeClass(
        _load_image,
        is_changed=_load_image_hash,
        validate=_load_image_exists,
        validate_inputs=("image",),
    ),
    "ImageInvert": NodeClass(_invert),
    "ImageScale": NodeClass(_scale),
    "ImageBlur": NodeClass(_blur),
    "SaveImage": NodeClass(_save_image, hidden_inputs=_SAVE_HIDDEN),
    "PreviewImage": NodeClass(_preview_image, hidden_inputs=_SAVE_HIDDEN),
    # IS_CHANGED returns the time, so it is never served from the cache.
    "SaveImageWebsocket": NodeClass(
        _save_image_websocket, is_changed=lambda inputs, folders: time.time()
    ),
    "Clean input and output file": NodeClass(_clean_file),
    "EmptyLatentImage": NodeClass(_empty_latent),
}


def input_spec(info: Mapping[str, Any], name: str) -> tuple[Any, str, dict[str, Any]] | None:
    """(type, category, options) of an input as ComfyUI's get_input_info reports it."""
    for category in ("required", "optional", "hidden"):
        spec = info["input"].get(category, {}).get(name)
        if spec is not None:
            if isinstance(spec, str):
                return spec, category, {}
            return spec[0], category, (spec[1] if len(spec) > 1 else {})
    return None


def input_image_names(input_dir: str) -> list[str]:
    """LoadImage's choices: the image files directly in the input folder, sorted."""
    names = [n for n in os.listdir(input_dir) if os.path.isfile(os.path.join(input_dir, n))]
    return sorted(n for n in names if _is_image_name(n))


def _is_image_name(name: str) -> bool:
    mime, _ = mimetypes.guess_type(name, strict=False)
    return bool(mime) and mime.split("/")[0] == "image"


def describe_value(value: Any) -> Any:
    """ComfyUI's format_value for execution_error current_inputs."""
    if value is None or isinstance(value, int | float | bool | str):
        return value
    if isinstance(value, list) and value and isinstance(value[0], Image.Image):
        width, height = value[0].size
        return f"tensor(<IMAGE batch={len(value)} height={height} width={width} channels=3>)"
    return str(value)
