"""Config defaults and validation.

  defaults           every pretraining field, documented once; dataset presets; view groups
  transfer_defaults  every transfer-job field
  validation         types, ranges and names, all problems at once, before anything runs
  overrides          a misspelt or mistyped --config.x=y as one line with the closest names
"""
