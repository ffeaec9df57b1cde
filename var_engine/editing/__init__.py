"""Zero-shot editing: in-painting, out-painting and class-conditional editing as a forcing rule of the sampler."""
from .inputs import (check_mask_covers, fit_to_model, image_batch, mask_batch, mask_from_editor, open_image,
                     outpaint_canvas)
from .masks import (border_mask, box_mask, centre_box_mask, keep_alpha, keep_maps, masked_psnr, paste_back,
                    seam_strength, stroke_mask)
from .rule import EditConfig, EditForcer

__all__ = ["EditConfig", "EditForcer", "border_mask", "box_mask", "centre_box_mask", "check_mask_covers",
           "fit_to_model", "image_batch", "keep_alpha", "keep_maps", "mask_batch", "mask_from_editor",
           "masked_psnr", "open_image", "outpaint_canvas", "paste_back", "seam_strength", "stroke_mask"]
