"""The shared vocabulary of lbbench: plain typed data that every layer speaks. Imports nothing else of lbbench."""
