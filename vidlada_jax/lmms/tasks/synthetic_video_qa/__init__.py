"""The offline lmms-eval task `synthetic_video_qa` (see utils.py for its data and scoring)."""
