"""frozen_scale.distributed"""
