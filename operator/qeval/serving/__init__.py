"""Serving: OpenAI-compatible servers and qeval's streaming client.

``hf_server`` is the hf backend's server (transformers, one request at a time; never
reported as vLLM); ``launch`` starts a server (that one, or ``vllm serve``) and waits
until it is healthy; ``client`` is the asyncio client the benchmark and similarity
stages use against either.
"""
