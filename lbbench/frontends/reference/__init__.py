"""Reference front ends run as their operators run them: HAProxy, nginx, Apache httpd."""
