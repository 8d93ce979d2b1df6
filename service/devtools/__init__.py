"""Dev tools (dev mode, demo events, embedded broker, publish); the runtime never imports them."""
