"""The HTTP and WebSocket gateway: talks to clients, holds no mail state."""
