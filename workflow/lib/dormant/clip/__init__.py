"""The CLIP track (docs/methods.md section 9): backdoored contrastive image-text models, their defenses
(CleanCLIP, FT) and the zero-shot adapter that every image-classification stage runs on. Captions and prompts
in ``captions`` (material in ``captions.yaml``), tokenizers in ``text``, the adapter in ``model``, losses in
``loss``, training in ``train``/``fit``, poisoning in ``poison``, user weights in ``weights``. Submodules
import open_clip only inside the functions that need it."""
