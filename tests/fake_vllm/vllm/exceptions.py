"""vLLM's exception classes (``vllm/exceptions.py`` of vLLM 0.31): validation errors are not ValueErrors."""


class VLLMError(Exception):
    """Base class for all vLLM-specific errors."""


class VLLMClientError(VLLMError):
    """Errors caused by the client request."""


class VLLMValidationError(VLLMClientError):
    """A request parameter out of range (raised by ``SamplingParams``)."""

    def __init__(self, message: str, *, parameter: str | None = None, value=None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.value = value
