"""Training of LG-ANNA embedders: teachers and soft labels, hard-negative mining, ICL prompts, losses, trainer."""
