"""Other clients' API dialects on the same job spine: the OpenAI Images API and AUTOMATIC1111's /sdapi/v1."""
