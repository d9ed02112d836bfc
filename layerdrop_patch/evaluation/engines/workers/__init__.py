"""Engine worker scripts (`python vllm_worker.py`, `python llamacpp_worker.py`): standard library plus the engine
only, because they run in whatever Python has the engine installed. The client is `engines/worker.py`."""
