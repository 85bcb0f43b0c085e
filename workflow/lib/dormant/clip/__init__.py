"""CLIP track (issue 17): zero-shot adapter, contrastive training, captions and pretrained weights."""
