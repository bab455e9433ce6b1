"""The one stage shape, shared by every stage: plan units -> run units -> finalize.

A stage (prep.pipeline.stage.Stage) says what a unit is and how to run and finalize it; the
driver (prep.pipeline.driver) owns everything around that: claiming the output and its lock,
resume, the progress bar, a dead worker as one line, Ctrl-C, the summary and the manifest. Where
units run is an executor (prep.pipeline.local: this machine's processes) that knows nothing of
what runs.
"""
