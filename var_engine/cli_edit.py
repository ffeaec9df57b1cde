"""`var-engine edit`: zero-shot in-painting, out-painting and class-conditional editing of one image."""
from __future__ import annotations

import argparse

from .cli_common import (add_depth_args, add_model_args, add_sampling_args, add_search_args, command,
                         depth_plan_from_args, int_list, load_pipeline, search_from_args)
from .errors import VarEngineError


def _edit_inputs(args: argparse.Namespace, size: int):
    """(image (1, 3, H, W), mask (1, 1, H, W)) from --image and one of --mask / --box / --outpaint."""
    from .editing import box_mask, image_batch, mask_batch, open_image, outpaint_canvas

    chosen = [name for name in ("mask", "box", "outpaint") if getattr(args, name) is not None]
    if len(chosen) != 1:
        raise VarEngineError("give exactly one of --mask PNG, --box x0,y0,x1,y1 or --outpaint PIXELS")
    image = image_batch(open_image(args.image))
    H, W = image.shape[-2:]
    if args.mask is not None:
        return image, mask_batch(open_image(args.mask, "mask"), 1, (H, W))
    if args.box is not None:
        if len(args.box) != 4:
            raise VarEngineError(f"--box needs four integers x0,y0,x1,y1, got {len(args.box)}")
        x0, y0, x1, y1 = args.box
        if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
            raise VarEngineError(f"--box {x0},{y0},{x1},{y1} must lie in the {W}x{H} image with x0 < x1 and y0 < y1")
        mask = box_mask(max(H, W), x0, y0, x1, y1)[..., :H, :W]
        return image, mask.contiguous()
    if not 1 <= args.outpaint < size // 2:
        raise VarEngineError(f"--outpaint must be in [1, {size // 2 - 1}] pixels of the model's {size}px output, "
                             f"got {args.outpaint}")
    return outpaint_canvas(image, size, args.outpaint)


@command("edit", "regenerate a masked region of an image (in-painting, out-painting, class-conditional editing)")
def cmd_edit(args: argparse.Namespace) -> int:
    from .editing import EditConfig
    from .images import save_grid, save_png

    if args.num < 1:
        raise VarEngineError("--num must be >= 1")
    search, budget = search_from_args(args)
    config = EditConfig(loop=args.loop, scale_mask=args.scale_mask, dilate=args.dilate,
                        paste_back=not args.no_paste_back, feather=args.feather,
                        feather_position=args.feather_position)
    pipe = load_pipeline(args)
    image, mask = _edit_inputs(args, pipe.config.image_size)
    label = None if args.class_ is None else args.class_
    plan = depth_plan_from_args(pipe, args, args.num)
    out = pipe.edit(image, mask, label, num=args.num, seed=args.seed, cfg=args.cfg, top_k=args.top_k,
                    top_p=args.top_p, more_smooth=args.more_smooth, layer_plan=plan, draw=args.draw,
                    precision=args.precision, search=search, budget=budget, config=config,
                    transient_last_scale=args.transient_last_scale)
    images = out.images.cpu()
    if args.num == 1:
        save_png(images[0], args.output)
    else:
        save_grid(images, args.output, nrow=min(8, args.num))
    print(f"wrote {args.output} ({args.num} edit{'s' if args.num > 1 else ''}, "
          f"{pipe.config.image_size}x{pipe.config.image_size})")
    return 0


def _configure_edit(p: argparse.ArgumentParser) -> None:
    from .editing import EditConfig

    default = EditConfig()
    add_model_args(p)
    add_sampling_args(p)
    add_depth_args(p)
    add_search_args(p)
    g = p.add_argument_group("edit")
    g.add_argument("--image", required=True, help="input image (any size; resized to the model's with a note)")
    g.add_argument("--mask", default=None, help="mask PNG of the image's size: white (or painted) = regenerate")
    g.add_argument("--box", type=int_list, default=None, help="regenerate the box x0,y0,x1,y1 (input pixels)")
    g.add_argument("--outpaint", type=int, default=None,
                   help="shrink the image into the centre and generate a border this many output pixels wide")
    g.add_argument("--class", dest="class_", default=None,
                   help="edit toward this class (id or name; default: in-paint without a class)")
    g.add_argument("--num", type=int, default=1, help="edits of the image (a grid when > 1)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--loop", choices=["closed", "open"], default=default.loop,
                   help="closed: kept region re-quantized against the running f_hat; open: the official notebook's")
    g.add_argument("--scale-mask", choices=["bilinear", "inside"], default=default.scale_mask,
                   help="keep maps of coarser scales: bilinear (the notebook's) or cells entirely inside")
    g.add_argument("--dilate", type=int, default=default.dilate, help="pixels added around the masked region")
    g.add_argument("--feather", type=int, default=default.feather, help="paste-back seam ramp: 2 * FEATHER + 1 pixels")
    g.add_argument("--feather-position", choices=["centred", "inside", "outside"], default=default.feather_position,
                   help="where the seam ramp lies relative to the mask edge")
    g.add_argument("--no-paste-back", action="store_true", help="return the decoded edit without pasting kept pixels")
    g.add_argument("-o", "--output", default="edit.png", help="output PNG")


cmd_edit.configure = _configure_edit
