from prep.cli import main

main(prog_name="prep")  # `python -m prep.cli` (as prep run and Slurm scripts call it) names itself prep
