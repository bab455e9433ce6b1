"""`python -m prep.latents.cli`: the `prep latents` command alone (it lives in prep.cli.latents)."""

from prep.cli.latents import latents

if __name__ == "__main__":
    latents(prog_name="prep latents")
