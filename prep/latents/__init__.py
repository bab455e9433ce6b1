"""`prep latents`: images and videos to VAE latent caches by resolution bucket, with text embeddings.

buckets (the bucket table and cover-crop geometry) -> media (decoding in CPU workers) ->
families (FLUX, Wan 2.1, HunyuanVideo encoders) -> stage (plan, run units, finalize).
"""
