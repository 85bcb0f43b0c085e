"""The CLIP track (issue 17): backdoored contrastive image-text models, their defenses (CleanCLIP, FT) and a
zero-shot classifier adapter that the image-classification stages run on. Captions and prompts live in
``captions`` (material in ``captions.yaml``), tokenizers in ``text``. Submodules import open_clip only inside
the functions that need it."""
