"""Super resolution with the Real-ESRGAN networks: the `upscale` engine and a small function API."""
