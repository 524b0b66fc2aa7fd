"""Request, response and error models shared by the daemon and the client."""
